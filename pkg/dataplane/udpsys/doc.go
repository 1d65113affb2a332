// Package udpsys is the Linux system-call layer of batched UDP I/O: the
// recvmmsg, sendmmsg and sendmsg wrappers, socket addresses in msg_name,
// and the control messages of UDP GSO (UDP_SEGMENT), GRO (UDP_GRO) and
// socket drops (SO_RXQ_OVFL). pkg/dataplane's gso datapath and the
// benchmark harness's traffic generator (internal/bench) both build their
// messages with it, so the layout is written once.
package udpsys
