package loader

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"runtime"
	"testing"
)

// TestObjectSHA256 checks the hash against the committed object file of
// this architecture's byte order.
func TestObjectSHA256(t *testing.T) {
	name := "relay_bpfel.o"
	switch runtime.GOARCH {
	case "mips", "mips64", "ppc64", "s390x":
		name = "relay_bpfeb.o"
	}
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	if got, want := ObjectSHA256(), hex.EncodeToString(sum[:]); got != want {
		t.Fatalf("ObjectSHA256 %s, %s hashes to %s", got, name, want)
	}
	if ObjectSize() != len(b) {
		t.Fatalf("ObjectSize %d, file %d", ObjectSize(), len(b))
	}
}
