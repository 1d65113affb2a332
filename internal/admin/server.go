package admin

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hybridrelay/hybridrelay/pkg/control"
)

// ErrNoKernelPath answers "channels" when serve runs without xdp.
var ErrNoKernelPath = errors.New("the daemon runs without the kernel fast path (datapath is not xdp)")

// Source is what the daemon exposes on the socket.
type Source interface {
	Snapshot() (Snapshot, error)
	Allocations() []control.AllocationInfo
	// Channels returns ErrNoKernelPath without the xdp datapath.
	Channels() ([]Channel, error)
	// SetDraining starts (true) or ends draining and returns the state
	// after the change.
	SetDraining(on bool) (DrainStatus, error)
}

const (
	maxRequest     = 4096
	requestTimeout = 10 * time.Second
	idleTimeout    = 30 * time.Second
	maxConns       = 16
)

// Request is one line from a client.
type Request struct {
	Cmd string `json:"cmd"`
}

// Response is one line to a client.
type Response struct {
	OK    bool            `json:"ok"`
	Error string          `json:"error,omitempty"`
	Data  json.RawMessage `json:"data,omitempty"`
}

// Server serves the admin socket.
type Server struct {
	ln   *net.UnixListener
	path string
	src  Source
	log  *slog.Logger
	uid  int
	sem  chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
	open map[net.Conn]struct{}
	done bool
}

// Listen creates the socket at path: its directory is created with mode
// 0700 (an existing one is tightened to 0700 when this process owns it),
// a stale socket from a previous run is removed, and the socket gets mode
// 0600. A socket some live process still answers on is an error, so two
// daemons cannot share one path.
func Listen(path string, src Source, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.Default()
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("admin socket: create %s: %w", dir, err)
	}
	if err := tightenDir(dir); err != nil {
		return nil, err
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("admin socket %s: another process is serving it (is hybridrelay already running?)", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("admin socket: remove stale %s: %w", path, err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	// The 0700 directory already keeps others out; the mode is a second
	// fence, and SO_PEERCRED below a third.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("admin socket: chmod %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(true)
	s := &Server{ln: ln, path: path, src: src, log: log, uid: os.Geteuid(),
		sem: make(chan struct{}, maxConns), open: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

// tightenDir makes dir 0700 when it is ours and looser than that.
func tightenDir(dir string) error {
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("admin socket: %w", err)
	}
	if st.Mode().Perm()&0o077 == 0 {
		return nil
	}
	if owner, ok := fileOwner(st); ok && owner == os.Geteuid() {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("admin socket: chmod %s: %w", dir, err)
		}
		return nil
	}
	return fmt.Errorf("admin socket: directory %s is accessible to other users (mode %v) and not ours to fix; use a private directory", dir, st.Mode().Perm())
}

// Path is the socket's path.
func (s *Server) Path() string { return s.path }

// Close stops accepting, closes open connections and removes the socket.
func (s *Server) Close() error {
	s.mu.Lock()
	s.done = true
	for c := range s.open {
		c.Close()
	}
	s.mu.Unlock()
	err := s.ln.Close()
	s.wg.Wait()
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("close admin socket: %w", err)
	}
	return nil
}

func (s *Server) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Warn("admin socket: accept", "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if !s.allowed(c) {
			c.Close()
			continue
		}
		select {
		case s.sem <- struct{}{}:
		default:
			c.Close() // too many clients; they are local tools, they retry
			continue
		}
		s.mu.Lock()
		if s.done {
			s.mu.Unlock()
			c.Close()
			<-s.sem
			return
		}
		s.open[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() { <-s.sem }()
			s.serve(c)
			s.mu.Lock()
			delete(s.open, c)
			s.mu.Unlock()
			c.Close()
		}()
	}
}

// serve answers requests on c until it closes, idles, or sends garbage.
func (s *Server) serve(c *net.UnixConn) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("admin socket: internal error", "panic", r)
		}
	}()
	rd := bufio.NewReaderSize(c, maxRequest)
	enc := json.NewEncoder(c)
	for {
		c.SetReadDeadline(time.Now().Add(idleTimeout))
		line, err := rd.ReadSlice('\n')
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				c.SetWriteDeadline(time.Now().Add(requestTimeout))
				enc.Encode(Response{Error: fmt.Sprintf("request longer than %d bytes", maxRequest)})
			}
			return
		}
		var req Request
		resp := Response{}
		if err := json.Unmarshal(line, &req); err != nil {
			resp.Error = "request is not JSON: " + err.Error()
		} else {
			resp = s.handle(req)
		}
		c.SetWriteDeadline(time.Now().Add(requestTimeout))
		if err := enc.Encode(resp); err != nil {
			return
		}
	}
}

func (s *Server) handle(req Request) Response {
	var data any
	var err error
	switch req.Cmd {
	case "stats":
		data, err = s.src.Snapshot()
	case "allocations":
		data = s.src.Allocations()
	case "channels":
		data, err = s.src.Channels()
	case "drain":
		data, err = s.src.SetDraining(true)
	case "undrain":
		data, err = s.src.SetDraining(false)
	default:
		return Response{Error: fmt.Sprintf("unknown command %q (stats, allocations, channels, drain, undrain)", req.Cmd)}
	}
	if err != nil {
		return Response{Error: err.Error()}
	}
	raw, err := json.Marshal(data)
	if err != nil {
		return Response{Error: "encode: " + err.Error()}
	}
	return Response{OK: true, Data: raw}
}
