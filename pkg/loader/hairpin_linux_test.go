package loader

import (
	"bytes"
	"encoding/hex"
	"testing"
	"time"
)

// TestHairpinFollowsItsTarget: a relay-to-relay entry forwards exactly
// while the other allocation's channel is installed, never past the
// earlier of the two expiries, and falls back to passing (userspace) when
// the target goes, in every order of install, refresh and delete.
func TestHairpinFollowsItsTarget(t *testing.T) {
	e := newProgEnv(t, 16)
	data := seq(40)
	in := c2pIn(chHpA, data, nil, nil)
	want := hairpinOut(chHpA, chHpB, data, nil)
	expect := func(step string, ret uint32, hairpin bool) {
		t.Helper()
		got, out, err := e.run(e.x.Program(), append([]byte(nil), in...), e.rc0)
		if err != nil {
			t.Fatal(err)
		}
		if got != ret {
			t.Fatalf("%s: return %d, want %d", step, got, ret)
		}
		if hairpin && !bytes.Equal(out, want) {
			t.Fatalf("%s: output\n got %s\nwant %s", step, hex.EncodeToString(out), hex.EncodeToString(want))
		}
		if !hairpin && !bytes.Equal(out, in) {
			t.Fatalf("%s: passed frame modified", step)
		}
	}
	put := func(c Channel, exp time.Time) {
		t.Helper()
		c.Expires = exp
		if err := e.x.PutChannel(c); err != nil {
			t.Fatal(err)
		}
	}
	a, b := chHpA, chHpB
	put(a, hour())
	expect("A alone (B would get a Data indication)", xdpPass, false)
	put(b, hour())
	expect("B bound its channel to A's relayed address", xdpTX, true)

	// The entry carries the earlier expiry: B's channel expiring first
	// stops the kernel even though A's is live.
	b.Expires = time.Now().Add(-time.Second)
	if err := e.x.UpdateExpiry(b); err != nil {
		t.Fatal(err)
	}
	expect("B's channel expired", xdpPass, false)
	b.Expires = hour()
	if err := e.x.UpdateExpiry(b); err != nil {
		t.Fatal(err)
	}
	expect("B refreshed", xdpTX, true)
	a.Expires = time.Now().Add(-time.Second)
	if err := e.x.UpdateExpiry(a); err != nil {
		t.Fatal(err)
	}
	expect("A's channel expired", xdpPass, false)
	a.Expires = hour()
	if err := e.x.UpdateExpiry(a); err != nil {
		t.Fatal(err)
	}

	// B's channel goes: A falls back before B's entries are deleted.
	if err := e.x.DeleteChannel(b); err != nil {
		t.Fatal(err)
	}
	expect("B unbound", xdpPass, false)
	seen := 0
	e.x.IterateChannels(func(ce ChannelEntry) bool {
		if ce.Hairpin {
			t.Errorf("channel %#x still hairpinned after its target left", ce.Number)
		}
		seen++
		return true
	})
	if seen != 1 {
		t.Fatalf("%d entries, want A only", seen)
	}

	// Install order reversed: B first, then A.
	if err := e.x.DeleteChannel(a); err != nil {
		t.Fatal(err)
	}
	put(b, hour())
	put(a, hour())
	expect("B then A", xdpTX, true)

	// B moves its channel to another peer: A no longer has a target.
	moved := b
	moved.Peer = ap("198.18.1.1:40000")
	moved.Expires = hour()
	if err := e.x.PutChannel(moved); err != nil {
		t.Fatal(err)
	}
	expect("B's channel now points elsewhere", xdpPass, false)

	// Usage counts on both channels.
	put(b, hour())
	before, _ := e.x.ChannelCounters(b)
	beforeA, _ := e.x.ChannelCounters(a)
	expect("again", xdpTX, true)
	afterB, _ := e.x.ChannelCounters(b)
	afterA, _ := e.x.ChannelCounters(a)
	if afterA.ToPeerPackets-beforeA.ToPeerPackets != 1 || afterB.ToClientPackets-before.ToClientPackets != 1 ||
		afterB.ToClientBytes-before.ToClientBytes != uint64(len(data)) {
		t.Fatalf("usage: A %+v -> %+v, B %+v -> %+v", beforeA, afterA, before, afterB)
	}
}

// TestHairpinReadopted: after a restart the re-adopted entries keep their
// relay-to-relay rewrite only while both channels are there.
func TestHairpinReadopted(t *testing.T) {
	e := newProgEnv(t, 16)
	for _, c := range []Channel{chHpA, chHpB} {
		c.Expires = hour()
		if err := e.x.PutChannel(c); err != nil {
			t.Fatal(err)
		}
	}
	dir := e.x.PinDir()
	if err := e.x.Close(); err != nil {
		t.Fatal(err)
	}
	x2, err := Load(Options{MaxChannels: 16, PinDir: dir, NetNS: "/run/netns/" + e.ns.Name})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	e.x = x2
	t.Cleanup(func() { x2.Unpin(); x2.Close() })
	in := c2pIn(chHpA, seq(8), nil, nil)
	ret, out, err := e.run(x2.Program(), append([]byte(nil), in...), e.rc0)
	if err != nil || ret != xdpTX || !bytes.Equal(out, hairpinOut(chHpA, chHpB, seq(8), nil)) {
		t.Fatalf("re-adopted hairpin: %d %v", ret, err)
	}
	// The restored control plane installs A again but not B.
	c := chHpA
	c.Expires = hour()
	if err := x2.PutChannel(c); err != nil {
		t.Fatal(err)
	}
	if _, err := x2.Reconcile(); err != nil {
		t.Fatal(err)
	}
	ret, out, err = e.run(x2.Program(), append([]byte(nil), in...), e.rc0)
	if err != nil || ret != xdpPass || !bytes.Equal(out, in) {
		t.Fatalf("after B was reconciled away: %d %v", ret, err)
	}
}
