package interop

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// The files in testdata/ are real turnutils_uclient 4.6.1 output, captured
// against coturn's own turnserver on loopback.
func TestParseUclient(t *testing.T) {
	tests := []struct {
		file             string
		sent, recv, lost int64
		sentBytes, recvB int64
		wantErr          error
		wantErrorLines   int
	}{
		{file: "uclient-ok-send-rtcp.txt", sent: 20, recv: 20, lost: 0, sentBytes: 2000, recvB: 2000},
		{file: "uclient-ok-tcp-channel.txt", sent: 7, recv: 7, lost: 0, sentBytes: 700, recvB: 700},
		{file: "uclient-lost-nopeer.txt", sent: 5, recv: 0, lost: 5, sentBytes: 500, recvB: 0},
		{file: "uclient-fail-auth.txt", wantErr: ErrNoSummary, wantErrorLines: 2},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			out, err := os.ReadFile(filepath.Join("testdata", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			r, err := ParseUclient(out)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				if len(r.Errors) != tc.wantErrorLines {
					t.Fatalf("error lines = %q, want %d", r.Errors, tc.wantErrorLines)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.SentMsgs != tc.sent || r.RecvMsgs != tc.recv || r.LostPackets != tc.lost ||
				r.SentBytes != tc.sentBytes || r.RecvBytes != tc.recvB {
				t.Fatalf("got %+v, want sent=%d recv=%d lost=%d bytes %d/%d",
					r, tc.sent, tc.recv, tc.lost, tc.sentBytes, tc.recvB)
			}
		})
	}
}

// FuzzParseUclient feeds arbitrary output to the parser: it must never
// panic, and a report it accepts must have its totals.
func FuzzParseUclient(f *testing.F) {
	for _, name := range []string{"uclient-ok-send-rtcp.txt", "uclient-ok-tcp-channel.txt", "uclient-lost-nopeer.txt", "uclient-fail-auth.txt"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("start_mclient: tot_send_msgs=99999999999999999999999, tot_recv_msgs=1\nTotal lost packets -1 (nan%), total send dropped 0 (0%)"))
	f.Fuzz(func(t *testing.T, out []byte) {
		r, err := ParseUclient(out)
		if err == nil && r.SentMsgs < 0 {
			t.Fatalf("accepted a negative total: %+v", r)
		}
	})
}
