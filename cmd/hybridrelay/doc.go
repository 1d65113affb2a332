// Command hybridrelay runs the TURN relay (`serve`) and the operator tools
// (`stats`, `maps`, `probe`, `compare`, `loadgen`).
//
// main.go owns the application: register adds a subcommand (each subcommand
// file calls it from init()), run maps errors to exit codes (1 runtime, 2
// usage or configuration) and keeps panics from reaching the user.
//
// serve.go layers the settings (internal/config), opens the datapath chosen
// by datapath.go (the decision probe.go shares), starts the control server,
// and serves the admin socket and metrics (endpoints.go); xdp.go loads and
// attaches the kernel fast path. stats.go and maps.go read a daemon through
// its admin socket (internal/admin) or the pinned maps (loader.OpenPinned).
package main
