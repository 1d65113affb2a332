// Package turnclient is a small TURN client (RFC 8656) over UDP for load
// generation and end-to-end tests: Allocate, Refresh, CreatePermission,
// ChannelBind with long-term credentials (RFC 8489 section 9.2, including
// 401 and 438 handling) or TURN REST API credentials, plus the data framing
// (Send and Data indications, ChannelData) as allocation-free append and
// parse functions so a generator can build packets at line rate. An
// Allocate answered 300 Try Alternate is retried on the ALTERNATE-SERVER
// with the same credentials (RFC 8489 section 10; alternate.go), unless
// Config.IgnoreAlternate.
//
// STUN encoding is github.com/pion/stun/v3; the TURN attributes that pion
// keeps internal (REQUESTED-TRANSPORT, LIFETIME, CHANNEL-NUMBER, ...) are
// encoded here.
package turnclient
