package loader

import (
	"crypto/sha256"
	"encoding/hex"
)

// ObjectSHA256 is the SHA-256 of the embedded BPF object (relay_bpfel.o or
// relay_bpfeb.o, whichever this architecture's byte order embeds), so
// `hybridrelay version` can say exactly which kernel program a binary
// carries: two builds with the same hash load the same program.
func ObjectSHA256() string {
	sum := sha256.Sum256(_RelayBytes)
	return hex.EncodeToString(sum[:])
}

// ObjectSize is the embedded BPF object's size in bytes.
func ObjectSize() int { return len(_RelayBytes) }
