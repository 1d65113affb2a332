package interop

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// UclientReport is the summary turnutils_uclient (coturn 4.5 and later)
// prints when a run ends. turnutils_uclient exits 0 even when every packet
// was lost, so a test must look at these numbers, not at the exit status
// alone.
type UclientReport struct {
	SentMsgs, RecvMsgs   int64
	SentBytes, RecvBytes int64
	LostPackets          int64
	LostPercent          float64
	SendDropped          int64
	// Errors holds every line that contains "ERROR:" (for example "ERROR:
	// Cannot complete Allocation"), in order.
	Errors []string
}

var (
	// "5: : start_mclient: tot_send_msgs=20, tot_recv_msgs=20" — the final
	// totals; the once-a-second progress lines carry "msz=" before them.
	reTotMsgs = regexp.MustCompile(`start_mclient: tot_send_msgs=(\d+), tot_recv_msgs=(\d+)`)
	// "5: : start_mclient: tot_send_bytes ~ 2000, tot_recv_bytes ~ 2000"
	reTotBytes = regexp.MustCompile(`start_mclient: tot_send_bytes ~ (\d+), tot_recv_bytes ~ (\d+)`)
	// "5: : Total lost packets 0 (0.000000%), total send dropped 0 (0.000000%)"
	reLost = regexp.MustCompile(`Total lost packets (\d+) \(([0-9.]+|-?nan)%\), total send dropped (\d+)`)
)

// ErrNoSummary means the output has no final summary: the client gave up
// before sending (allocation, permission or channel bind failed) or was
// killed.
var ErrNoSummary = errors.New("turnutils_uclient printed no summary")

// ParseUclient reads turnutils_uclient's combined output. It returns
// ErrNoSummary (wrapped, with the first error line if any) when the totals
// are missing.
func ParseUclient(out []byte) (UclientReport, error) {
	var r UclientReport
	var haveMsgs, haveLost bool
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if strings.Contains(line, "ERROR:") {
			r.Errors = append(r.Errors, strings.TrimSpace(line))
		}
		if m := reTotMsgs.FindStringSubmatch(line); m != nil {
			r.SentMsgs, _ = strconv.ParseInt(m[1], 10, 64)
			r.RecvMsgs, _ = strconv.ParseInt(m[2], 10, 64)
			haveMsgs = true
		}
		if m := reTotBytes.FindStringSubmatch(line); m != nil {
			r.SentBytes, _ = strconv.ParseInt(m[1], 10, 64)
			r.RecvBytes, _ = strconv.ParseInt(m[2], 10, 64)
		}
		if m := reLost.FindStringSubmatch(line); m != nil {
			r.LostPackets, _ = strconv.ParseInt(m[1], 10, 64)
			r.LostPercent, _ = strconv.ParseFloat(m[2], 64) // "nan" parses too
			r.SendDropped, _ = strconv.ParseInt(m[3], 10, 64)
			haveLost = true
		}
	}
	if err := sc.Err(); err != nil {
		return r, fmt.Errorf("read uclient output: %w", err)
	}
	if !haveMsgs || !haveLost {
		if len(r.Errors) > 0 {
			return r, fmt.Errorf("%w: %s", ErrNoSummary, r.Errors[0])
		}
		return r, ErrNoSummary
	}
	return r, nil
}
