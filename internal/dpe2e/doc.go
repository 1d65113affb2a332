// Package dpe2e holds the end-to-end equality tests of the userspace
// datapaths: the same traffic relayed through the plain and the gso
// datapath, inside network namespaces made by internal/netns, must leave
// the relay as the same bytes with valid UDP checksums (docs/design.md,
// Packet flows: a miss is always safe). It also holds the
// packet capture those tests verify with (AF_PACKET, independent checksum
// computation), which other end-to-end tests may reuse.
//
// pkg/dataplane must not import pkg/control, so the TURN-level variant
// (ChannelData and Data indications through the real control server) lives
// here too.
package dpe2e
