package loader

import (
	"bytes"
	"net/netip"
	"testing"
	"time"
)

// fastPublished reports whether the fast tables hold c's two keys.
func fastPublished(t *testing.T, x *XDP, c Channel) (c2p, p2c bool) {
	t.Helper()
	ck, _, pk, _, err := c.keys(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	_, c2p = x.fastC2p.ways[fastKey(&ck)]
	_, p2c = x.fastP2c.ways[fastKey(&pk)]
	return c2p, p2c
}

// TestFastTableServesAndFallsBack: an installed channel is published in
// both fast tables, the program forwards from them alone (hash map entry
// removed behind the loader's back) and from the hash maps alone (fast
// ways unpublished) with the same bytes, and a deleted channel is in
// neither.
func TestFastTableServesAndFallsBack(t *testing.T) {
	for _, c := range []Channel{chV4, chV6} {
		e := newProgEnv(t, 16)
		c.Expires = hour()
		if err := e.x.PutChannel(c); err != nil {
			t.Fatal(err)
		}
		if c2p, p2c := fastPublished(t, e.x, c); !c2p || !p2c {
			t.Fatalf("%v: published c2p %v p2c %v", c.Client, c2p, p2c)
		}
		ck, cv, pk, pv, err := c.keys(0, 0)
		if err != nil {
			t.Fatal(err)
		}
		c2pFrame, p2cFrame := c2pIn(c, seq(40), nil, nil), p2cIn(c, seq(40), nil)
		forward := func(what string) (a, b []byte) {
			t.Helper()
			ret, outC, err := e.run(e.x.Program(), c2pFrame, e.rc0)
			if err != nil || ret != xdpRedirect {
				t.Fatalf("%v %s: c2p %d %v", c.Client, what, ret, err)
			}
			ret, outP, err := e.run(e.x.Program(), p2cFrame, e.rp0)
			if err != nil || ret != xdpRedirect {
				t.Fatalf("%v %s: p2c %d %v", c.Client, what, ret, err)
			}
			return outC, outP
		}
		both1, both2 := forward("both tables")

		// The hash map entries gone, the fast ways alone forward.
		if err := e.x.objs.C2pChannels.Lookup(ck, &cv); err != nil {
			t.Fatal(err)
		}
		if err := e.x.objs.P2cChannels.Lookup(pk, &pv); err != nil {
			t.Fatal(err)
		}
		if err := e.x.objs.C2pChannels.Delete(ck); err != nil {
			t.Fatal(err)
		}
		if err := e.x.objs.P2cChannels.Delete(pk); err != nil {
			t.Fatal(err)
		}
		fast1, fast2 := forward("fast tables only")
		// Back in the hash maps, unpublished from the fast tables: the
		// program falls back to the hash maps.
		if err := e.x.objs.C2pChannels.Put(ck, cv); err != nil {
			t.Fatal(err)
		}
		if err := e.x.objs.P2cChannels.Put(pk, pv); err != nil {
			t.Fatal(err)
		}
		e.x.mu.Lock()
		e.x.fastC2p.del(fastKey(&ck))
		e.x.fastP2c.del(fastKey(&pk))
		e.x.mu.Unlock()
		hash1, hash2 := forward("hash maps only")
		for _, o := range [][2][]byte{{both1, fast1}, {both1, hash1}, {both2, fast2}, {both2, hash2}} {
			if !bytes.Equal(o[0], o[1]) {
				t.Fatalf("%v: the tables forward different bytes", c.Client)
			}
		}

		// Installed again, then deleted: in neither table, passed.
		if err := e.x.PutChannel(c); err != nil {
			t.Fatal(err)
		}
		if err := e.x.DeleteChannel(c); err != nil {
			t.Fatal(err)
		}
		if c2p, p2c := fastPublished(t, e.x, c); c2p || p2c {
			t.Fatalf("%v: deleted channel still published: %v %v", c.Client, c2p, p2c)
		}
		if ret, _, err := e.run(e.x.Program(), c2pFrame, e.rc0); err != nil || ret != xdpPass {
			t.Fatalf("%v deleted: c2p %d %v", c.Client, ret, err)
		}
		if ret, _, err := e.run(e.x.Program(), p2cFrame, e.rp0); err != nil || ret != xdpPass {
			t.Fatalf("%v deleted: p2c %d %v", c.Client, ret, err)
		}
	}
}

// TestFastTableFullSet: a channel whose set is full is forwarded from the
// hash map, and is published once a way of its set is free again (after
// a grace period); an expiry refresh stays in its way and takes effect.
func TestFastTableFullSet(t *testing.T) {
	e := newProgEnv(t, 16)
	x := e.x
	// Three channels whose client->peer keys share a set.
	var same []Channel
	want := uint32(0)
	for port := uint16(50000); len(same) < 3 && port < 60000; port++ {
		c := chV4
		c.Client = netip.AddrPortFrom(chV4.Client.Addr(), port)
		c.Relay = netip.AddrPortFrom(chV4.Relay.Addr(), 49152+uint16(len(same)))
		c.Expires = hour()
		ck, _, _, _, err := c.keys(0, 0)
		if err != nil {
			t.Fatal(err)
		}
		k := fastKey(&ck)
		set := fastSet(&k, x.fastSeed, x.fastSets)
		if len(same) == 0 {
			want = set
		}
		if set == want {
			same = append(same, c)
		}
	}
	if len(same) < 3 {
		t.Fatal("no three keys share a set")
	}
	for _, c := range same {
		if err := x.PutChannel(c); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range same {
		c2p, _ := fastPublished(t, x, c)
		if c2p != (i < fastWays) {
			t.Fatalf("channel %d of a %d-way set: published %v", i, fastWays, c2p)
		}
		if ret, _, err := e.run(x.Program(), c2pIn(c, seq(40), nil, nil), e.rc0); err != nil || ret != xdpRedirect {
			t.Fatalf("channel %d: c2p %d %v", i, ret, err)
		}
	}
	// A way frees: the waiting channel is published once no program can
	// still read the old one.
	if err := x.DeleteChannel(same[0]); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if c2p, _ := fastPublished(t, x, same[2]); c2p {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the waiting channel was not published after a way freed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if ret, _, err := e.run(x.Program(), c2pIn(same[0], seq(40), nil, nil), e.rc0); err != nil || ret != xdpPass {
		t.Fatalf("deleted channel: c2p %d %v", ret, err)
	}

	// An expiry refresh is written in place: same way, and an expiry in
	// the past stops the kernel forwarding at once.
	c := same[1]
	ck, _, _, _, err := c.keys(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	x.mu.Lock()
	before := x.fastC2p.ways[fastKey(&ck)]
	x.mu.Unlock()
	c.Expires = time.Now().Add(-time.Second)
	if err := x.UpdateExpiry(c); err != nil {
		t.Fatal(err)
	}
	x.mu.Lock()
	after, ok := x.fastC2p.ways[fastKey(&ck)]
	x.mu.Unlock()
	if !ok || after != before {
		t.Fatalf("expiry refresh moved the way: %d -> %d (%v)", before, after, ok)
	}
	c0, err := x.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if ret, _, err := e.run(x.Program(), c2pIn(c, seq(40), nil, nil), e.rc0); err != nil || ret != xdpPass {
		t.Fatalf("expired channel: c2p %d %v", ret, err)
	}
	c1, err := x.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if c1.Get(PassExpired) != c0.Get(PassExpired)+1 {
		t.Fatalf("expired channel not counted expired: %d -> %d", c0.Get(PassExpired), c1.Get(PassExpired))
	}
}
