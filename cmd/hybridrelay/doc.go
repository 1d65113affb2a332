// Command hybridrelay runs the TURN relay (`serve`) and the operator tools
// (`stats`, `maps`, `probe`, `compare`, `loadgen`).
//
// main.go owns the application: register adds a subcommand (each subcommand
// file calls it from init()), run maps errors to exit codes (1 runtime, 2
// usage or configuration) and keeps panics from reaching the user.
package main
