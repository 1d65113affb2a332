package admin

import (
	"reflect"
	"strings"
	"testing"

	"github.com/hybridrelay/hybridrelay/pkg/loader"
)

func TestPassCounts(t *testing.T) {
	got := PassCounts(map[string]uint64{
		"fwd_to_peer_packets": 9, "pass_no_entry": 3, "pass_expired": 1, "pass_no_route": 7,
		"pass_too_big": 0, "pass_ttl": 2, "pass_new_thing": 5,
	})
	type row struct {
		name, group string
		n           uint64
		explained   bool
	}
	var rows []row
	for _, c := range got {
		rows = append(rows, row{c.Name, c.Group, c.Packets, c.Meaning != ""})
	}
	want := []row{
		{"expired", PassNormal, 1, true}, {"no_entry", PassNormal, 3, true},
		{"no_route", PassMisconfig, 7, true}, {"too_big", PassMisconfig, 0, true},
		// A reason this build does not know is shown, unexplained, as other.
		{"new_thing", PassOther, 5, false}, {"ttl", PassOther, 2, true},
	}
	if !reflect.DeepEqual(rows, want) {
		t.Fatalf("got %v\nwant %v", rows, want)
	}
}

func TestPassReasonsTable(t *testing.T) {
	seen := map[string]bool{}
	groups := map[string]bool{}
	for _, g := range PassGroups {
		groups[g] = true
	}
	for _, r := range PassReasons {
		if seen[r.Name] || !groups[r.Group] || r.Meaning == "" {
			t.Errorf("bad or duplicate entry %+v", r)
		}
		seen[r.Name] = true
	}
	// fib lookup's catch-all is gone with the next-hop table.
	if seen["not_forwarded"] {
		t.Error("not_forwarded is listed")
	}
	for _, n := range []string{"no_route", "local", "link_down", "no_nexthop", "no_egress", "no_neigh"} {
		if !seen[n] {
			t.Errorf("%s is not listed", n)
		}
	}
	if r := LookupPassReason("pass_local"); r.Group != PassNormal {
		t.Errorf("pass_local: %+v", r)
	}
}

// TestPassReasonsCoverTheProgram: every pass counter the loader exports has
// a group and a meaning here, and the table lists nothing else.
func TestPassReasonsCoverTheProgram(t *testing.T) {
	program := map[string]bool{}
	for i := 0; i < loader.NumCounters; i++ {
		if name, ok := strings.CutPrefix(loader.Counter(i).String(), "pass_"); ok {
			program[name] = true
		}
	}
	listed := map[string]bool{}
	for _, r := range PassReasons {
		listed[r.Name] = true
		if !program[r.Name] {
			t.Errorf("%s is listed but the program has no pass_%s counter", r.Name, r.Name)
		}
	}
	for name := range program {
		if !listed[name] {
			t.Errorf("pass_%s has no group or meaning", name)
		}
	}
}
