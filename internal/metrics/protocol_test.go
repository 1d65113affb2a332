package metrics

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hybridrelay/hybridrelay/internal/admin"
	"github.com/hybridrelay/hybridrelay/pkg/control"
)

// TestProtocolEvents: ServerStats.Protocol (DTLS, RFC 5780, RFC 6062
// counters) is exported as hybridrelay_protocol_events_total by event.
func TestProtocolEvents(t *testing.T) {
	st := control.ServerStats{Protocol: map[string]uint64{"dtls_handshakes": 3, "tcp_binds": 7, "rfc5780_responses": 0}}
	snap := func() (admin.Snapshot, error) {
		return admin.Snapshot{Time: time.Now(), Datapath: "plain", Server: &st}, nil
	}
	srv := httptest.NewServer(Handler(snap, nil))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`hybridrelay_protocol_events_total{event="dtls_handshakes"} 3`,
		`hybridrelay_protocol_events_total{event="tcp_binds"} 7`,
		`hybridrelay_protocol_events_total{event="rfc5780_responses"} 0`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("scrape lacks %s", want)
		}
	}
}
