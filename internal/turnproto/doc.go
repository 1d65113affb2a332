// Package turnproto owns the STUN and TURN wire constants that more than
// one package needs (RFC 8489, RFC 8656, RFC 5766): the magic cookie and
// header size, the channel number ranges, the ChannelData framing sizes and
// the address family codes of REQUESTED-ADDRESS-FAMILY. pkg/control and
// internal/turnclient take them from here; the XDP program keeps its own
// copy in bpf/consts.h (C cannot import Go), and pkg/loader's tests check
// the generated values against these.
package turnproto
