package loader

// The XDP object is built from bpf/relay.bpf.c by bpf2go (clang, libbpf
// headers); its output (relay_bpfel.go/.o for little-endian hosts,
// relay_bpfeb.go/.o for big-endian ones, so the control plane builds on
// every architecture) is committed so `go build` needs no clang. `make generate` reruns this; CI checks the
// committed files are current (tools/check-generated.sh). The -I adds
// Debian's multiarch asm/ headers that linux/*.h include.
//
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v3" -target bpfel,bpfeb -type c2p_key -type c2p_val -type p2c_key -type p2c_val -type chan_stats -type egress_entry -type hr_counter -type hr_family -type hr_chan_flag -type hr_map_size -type hr_chandata_limit -type hr_listener_flag -type hr_stun -type listener_key -type listener_val -type hr_meter -type fast_c2p_way -type fast_p2c_way relay ../../bpf/relay.bpf.c -- -I/usr/include/x86_64-linux-gnu
