package metrics

import (
	"fmt"
	"net/http"
)

// Probe paths served next to /metrics, for service managers and
// Kubernetes (livenessProbe, readinessProbe).
const (
	PathHealthz = "/healthz"
	PathReadyz  = "/readyz"
)

// Health are the checks behind /healthz and /readyz; a nil check passes.
type Health struct {
	// Live fails when the process should be restarted: a loop that must
	// run (the control plane's lifetime enforcement, the datapath's
	// receive loops) has stopped.
	Live func() error
	// Ready fails when the relay should get no new clients: listeners not
	// open, draining, or the datapath down.
	Ready func() error
}

// probeHandler answers 200 "ok" when check passes and 503 with the reason
// otherwise; only GET and HEAD.
func probeHandler(check func() error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if check != nil {
			if err := check(); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprintf(w, "not ok: %v\n", err)
				return
			}
		}
		fmt.Fprintln(w, "ok")
	}
}
