// Package turntest holds test helpers that need the module's datapath or a
// real TURN client: a pion/turn v4 client started on a connection
// (StartPion) or also allocated (NewPionClient), and a datapath whose
// sockets are made inside a network namespace (InNamespace). pkg/control's
// own tests use it, so it must never import pkg/control.
package turntest
