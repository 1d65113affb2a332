// Package config owns hybridrelay's serve settings: the configuration file
// format, the HYBRIDRELAY_* environment variables, the mapping of command-line
// flags onto the same keys, layering (defaults < file < environment < flags),
// and validation with messages that name where a bad value came from.
//
// # File format
//
// One setting per line, `key = value`, where key is exactly the long flag
// name of `hybridrelay serve` (min-port, auth-secret, ...). Blank lines and
// lines whose first non-blank character is `#` are ignored; in an unquoted
// value, `#` preceded by a blank starts a comment. A value may be quoted:
// "double quotes" use Go escapes (\" \\ \t \x41), 'single quotes' are
// literal. Repeatable keys (listen, relay-ip, user, auth-secret, allow-peer,
// deny-peer, xdp-iface) append one value per line; any other key given twice
// is an error. Unknown keys are errors with a did-you-mean suggestion.
//
// # Layering
//
// Each later source overrides the earlier ones key by key; for a repeatable
// key, a later source that names it replaces the whole list (so
// `--user a:b` on the command line replaces the file's users rather than
// adding to them). Environment variables are HYBRIDRELAY_ followed by the key
// in upper case with - replaced by _ (HYBRIDRELAY_MIN_PORT); a repeatable
// key takes a comma-separated list there.
//
// Every function in this package is pure: callers pass file contents and
// the environment in, so everything here is table-tested without I/O.
package config
