package admin

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"
)

// ErrNotRunning means nothing serves the admin socket (no daemon, or a
// stale socket file).
var ErrNotRunning = errors.New("no hybridrelay daemon is serving the admin socket")

// Client talks to a daemon's admin socket.
type Client struct {
	c  net.Conn
	rd *bufio.Reader
}

// Dial connects to the socket at path. A missing socket or one nobody
// listens on is ErrNotRunning; a permission problem says so.
func Dial(path string) (*Client, error) {
	c, err := net.DialTimeout("unix", path, 2*time.Second)
	if err != nil {
		switch {
		case errors.Is(err, os.ErrNotExist), errors.Is(err, syscall.ECONNREFUSED):
			return nil, fmt.Errorf("%w (%s)", ErrNotRunning, path)
		case errors.Is(err, os.ErrPermission):
			return nil, fmt.Errorf("admin socket %s: permission denied (it is root-only; run as root)", path)
		}
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	return &Client{c: c, rd: bufio.NewReaderSize(c, 1<<16)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.c.Close() }

// Call sends cmd and decodes the answer's data into out.
func (c *Client) Call(cmd string, out any) error {
	c.c.SetDeadline(time.Now().Add(requestTimeout))
	if err := json.NewEncoder(c.c).Encode(Request{Cmd: cmd}); err != nil {
		return fmt.Errorf("admin %s: %w", cmd, err)
	}
	line, err := c.rd.ReadBytes('\n')
	if err != nil {
		if errors.Is(err, syscall.ECONNRESET) || len(line) == 0 {
			return fmt.Errorf("admin %s: the daemon closed the connection (not root or not the daemon's user?): %w", cmd, err)
		}
		return fmt.Errorf("admin %s: %w", cmd, err)
	}
	var resp Response
	if err := json.Unmarshal(line, &resp); err != nil {
		return fmt.Errorf("admin %s: bad answer: %w", cmd, err)
	}
	if !resp.OK {
		return fmt.Errorf("admin %s: %s", cmd, resp.Error)
	}
	if out != nil {
		if err := json.Unmarshal(resp.Data, out); err != nil {
			return fmt.Errorf("admin %s: decode: %w", cmd, err)
		}
	}
	return nil
}
