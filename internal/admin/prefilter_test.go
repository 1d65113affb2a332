package admin

import (
	"reflect"
	"testing"
)

func TestPrefilterCounts(t *testing.T) {
	got := PrefilterCounts(map[string]uint64{
		"drop_prefilter_short": 2, "drop_prefilter_not_turn": 9, "drop_prefilter_zz_new": 1,
		"pass_no_entry": 5, "fwd_to_peer_packets": 7,
	})
	type row struct {
		name    string
		packets uint64
		known   bool
	}
	var rows []row
	for _, c := range got {
		rows = append(rows, row{c.Name, c.Packets, c.Meaning != ""})
	}
	want := []row{{"not_turn", 9, true}, {"short", 2, true}, {"zz_new", 1, false}}
	if !reflect.DeepEqual(rows, want) {
		t.Fatalf("got %v\nwant %v", rows, want)
	}
	if PrefilterCounts(map[string]uint64{"pass_other": 1}) != nil {
		t.Fatal("counts without pre-filter counters")
	}
}
