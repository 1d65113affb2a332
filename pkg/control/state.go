package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

// stateSaveInterval debounces state writes (each rewrites the whole file).
const stateSaveInterval = time.Second

// stateVersion is bumped when the file format changes incompatibly.
const stateVersion = 1

// stateWriter persists allocation state so a restart keeps media flowing
// (docs/design.md, Kernel-path invariants, 8). Changes only mark it dirty; the janitor writes at most
// once per stateSaveInterval, and Shutdown writes unconditionally.
type stateWriter struct {
	path  string
	dirty atomic.Bool
	mu    sync.Mutex // serialises writers of the file
}

func (w *stateWriter) markDirty() {
	if w.path != "" {
		w.dirty.Store(true)
	}
}

type stateFile struct {
	Version     int               `json:"version"`
	SavedAt     time.Time         `json:"saved_at"`
	Allocations []savedAllocation `json:"allocations"`
}

type savedChannel struct {
	Number  uint16         `json:"number"`
	Peer    netip.AddrPort `json:"peer"`
	Expires time.Time      `json:"expires"` // absolute; cooling when in the past
}

// savedAllocation is one UDP allocation. TCP/TLS allocations die with their
// connection and are never saved.
type savedAllocation struct {
	Client       netip.AddrPort   `json:"client"`
	Server       netip.AddrPort   `json:"server"`
	Username     string           `json:"username"`
	Relays       []netip.AddrPort `json:"relays"`
	Created      time.Time        `json:"created"`
	Expires      time.Time        `json:"expires"`
	DontFragment bool             `json:"dont_fragment"`
	Permissions  []PermissionInfo `json:"permissions"`
	Channels     []savedChannel   `json:"channels"`
}

func (a *allocation) snapshot() (savedAllocation, bool) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	if a.dead || a.tuple.proto != tUDP {
		return savedAllocation{}, false
	}
	sa := savedAllocation{
		Client: a.tuple.client, Server: a.tuple.server, Username: a.username,
		Created: a.created, Expires: a.expires, DontFragment: a.dontFrag,
	}
	for _, r := range a.relays {
		if r != nil {
			sa.Relays = append(sa.Relays, r.addr)
		}
	}
	for ip, exp := range a.perms {
		sa.Permissions = append(sa.Permissions, PermissionInfo{Peer: ip, Expires: exp})
	}
	for _, ch := range a.chans {
		sa.Channels = append(sa.Channels, savedChannel{Number: ch.num, Peer: ch.peer, Expires: ch.expires})
	}
	return sa, true
}

// saveState writes the state file when it changed (or always with force):
// JSON, written to a temporary file in the same directory with mode 0600,
// synced, then renamed over the old one, so a crash leaves either the old
// or the new state.
func (s *Server) saveState(force bool) error {
	w := &s.state
	if w.path == "" {
		return nil
	}
	if !w.dirty.Swap(false) && !force {
		return nil
	}
	st := stateFile{Version: stateVersion, SavedAt: time.Now()}
	s.allocs.Range(func(_, v any) bool {
		if sa, ok := v.(*allocation).snapshot(); ok {
			st.Allocations = append(st.Allocations, sa)
		}
		return true
	})
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := writeFileAtomic(w.path, b); err != nil {
		w.dirty.Store(true) // try again next tick
		return fmt.Errorf("save state %s: %w", w.path, err)
	}
	return nil
}

func writeFileAtomic(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// restoreState re-adopts the allocations of a previous process: relay
// sockets re-opened on the same ports, permissions and channels whose
// lifetime has not passed, offload entries reinstalled (Install replaces an
// entry the previous process left in the kernel). An allocation whose relay
// port cannot be re-opened, or whose listener is gone, is dropped. Called
// from Start, after the listeners are open.
func (s *Server) restoreState() error {
	if s.state.path == "" {
		return nil
	}
	b, err := os.ReadFile(s.state.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read state: %w", err)
	}
	var st stateFile
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("parse state %s: %w", s.state.path, err)
	}
	if st.Version != stateVersion {
		return fmt.Errorf("state %s: version %d, want %d", s.state.path, st.Version, stateVersion)
	}
	now := time.Now()
	restored := 0
	for _, sa := range st.Allocations {
		if !now.Before(sa.Expires) {
			continue
		}
		if err := s.restoreAllocation(sa, now); err != nil {
			s.log.Warn("allocation not restored", "client", sa.Client, "err", err)
			continue
		}
		restored++
	}
	s.state.markDirty()
	s.log.Info("allocation state restored", "file", s.state.path, "restored", restored, "saved", len(st.Allocations))
	return nil
}

func (s *Server) restoreAllocation(sa savedAllocation, now time.Time) error {
	var conn *udpSink
	s.lnMu.Lock()
	for _, c := range s.udpConns {
		la := c.LocalAddr()
		if netip.AddrPortFrom(la.Addr().Unmap(), la.Port()) == sa.Server {
			conn = &udpSink{conn: c, addr: sa.Client}
		}
	}
	s.lnMu.Unlock()
	if conn == nil {
		return fmt.Errorf("no udp listener on %s", sa.Server)
	}
	if len(sa.Relays) == 0 || len(sa.Relays) > 2 {
		return fmt.Errorf("%d relay addresses", len(sa.Relays))
	}
	t := fiveTuple{proto: tUDP, client: sa.Client, server: sa.Server}
	if s.lookup(t) != nil {
		return errors.New("5-tuple already allocated")
	}
	quotaKey := s.creds.Load().quotaKey(sa.Username)
	if s.reserveQuota(quotaKey) != quotaReserved {
		return errors.New("allocation quota reached")
	}
	var relays [2]*relaySock
	for _, ra := range sa.Relays {
		i := famIndex(familyOf(ra.Addr()))
		if relays[i] != nil {
			s.closeRelays(relays)
			s.releaseQuota(quotaKey)
			return fmt.Errorf("relay %s: a second relayed address of its family", ra)
		}
		rs, err := s.ports.openAt(ra)
		if err != nil {
			s.closeRelays(relays)
			s.releaseQuota(quotaKey)
			return fmt.Errorf("reopen relay: %w", err)
		}
		relays[i] = rs
	}
	// The state file keeps DONT-FRAGMENT: a restored allocation relays
	// with the DF policy it was created with (RFC 8656 section 14).
	if err := applyDontFragment(relays, sa.DontFragment); err != nil {
		s.closeRelays(relays)
		s.releaseQuota(quotaKey)
		return fmt.Errorf("reopen relay: %w", err)
	}

	a := newAllocation(s, t, conn, sa.Username, sa.Created)
	a.quotaKey = quotaKey
	a.dontFrag = sa.DontFragment
	a.relays = relays
	a.expires = sa.Expires
	for _, p := range sa.Permissions {
		if now.Before(p.Expires) {
			a.perms[p.Peer] = p.Expires
		}
	}
	for _, c := range sa.Channels {
		if c.Number < minChannel || c.Number > s.maxChannelNumber() || !now.Before(c.Expires.Add(channelCooldown)) {
			continue
		}
		if _, dup := a.chans[c.Number]; dup {
			continue
		}
		if _, dup := a.chanByPeer[c.Peer]; dup {
			continue
		}
		ch := &channel{num: c.Number, peer: c.Peer, expires: c.Expires, cooling: !now.Before(c.Expires),
			ownPeer: s.isOwnAddr(c.Peer.Addr())}
		a.chans[c.Number] = ch
		a.chanByPeer[c.Peer] = ch
	}
	for _, rs := range relays {
		if rs != nil {
			rs.alloc.Store(a)
		}
	}
	s.allocs.Store(t, a)
	a.mu.Lock()
	a.syncAllOffloadLocked(now)
	a.mu.Unlock()
	return nil
}
