package main

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hybridrelay/hybridrelay/internal/bench"
)

// TestLoadgenHelpGolden pins the --help of compare, loadgen and loadgen
// sink (flag names are an interface scripts use). -update rewrites them.
func TestLoadgenHelpGolden(t *testing.T) {
	for _, cmd := range [][]string{{"compare"}, {"loadgen"}, {"loadgen", "sink"}} {
		t.Run(strings.Join(cmd, "-"), func(t *testing.T) {
			stdout, stderr, code := runBinary(t, nil, append(cmd, "--help")...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			compareGolden(t, filepath.Join("testdata", "help-"+strings.Join(cmd, "-")+".golden"), stdout)
		})
	}
}

func TestLoadgenUsageErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"loadgen", "--peer", "127.0.0.1:9", "--auth-secret", "s"}, "--server"},
		{[]string{"loadgen", "--server", "127.0.0.1:3478", "--peer", "127.0.0.1:9"}, "either --user or --auth-secret"},
		{[]string{"loadgen", "--server", "127.0.0.1:3478", "--peer", "127.0.0.1:9", "--user", "a:b", "--auth-secret", "s"}, "either --user or --auth-secret"},
		{[]string{"loadgen", "--server", "127.0.0.1:3478", "--peer", "127.0.0.1:9", "--user", "nocolon"}, "NAME:PASSWORD"},
		{[]string{"loadgen", "--server", "127.0.0.1:3478", "--peer", "127.0.0.1:9", "--user", "a:b", "--duration", "48h"}, "--duration"},
		{[]string{"loadgen", "--server", "127.0.0.1:3478", "--peer", "127.0.0.1:9", "--user", "a:b", "--size", "8"}, "--size"},
		{[]string{"loadgen", "sink", "--listen", "nowhere"}, "--listen"},
		{[]string{"loadgen", "sink", "--listen", "127.0.0.1:0", "--rate", "-1"}, "--rate"},
	}
	for _, tt := range tests {
		_, stderr, code := runBinary(t, nil, tt.args...)
		if code != exitUsage || !strings.Contains(stderr, tt.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d mentioning %q", tt.args, code, stderr, exitUsage, tt.want)
		}
	}
}

// TestLoadgenThroughServe runs the three real processes on loopback: a
// relay (plain datapath), a reflecting sink, and the load client with REST
// credentials over 3 allocations. The sink must see every flow, and the
// reflected packets must come back to the client through the relay.
func TestLoadgenThroughServe(t *testing.T) {
	port := freePort(t)
	startDaemon(t, nil, "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--relay-ip", "127.0.0.1",
		"--auth-secret", "lg-secret", "--allow-peer", "127.0.0.1/32", "--datapath", "plain",
		"--admin-socket", "off", "--metrics-listen", "off")
	sinkPort := freePort(t)
	sink := make(chan []string, 1)
	go func() {
		out, errb, code := runBinary(t, nil, "loadgen", "sink", "--listen", fmt.Sprintf("127.0.0.1:%d", sinkPort), "--reflect", "--duration", "4s", "--json")
		sink <- []string{out, errb, fmt.Sprint(code)}
	}()
	time.Sleep(300 * time.Millisecond) // the sink binds its socket
	out, errb, code := runBinary(t, nil, "loadgen", "--server", fmt.Sprintf("127.0.0.1:%d", port), "--peer", fmt.Sprintf("127.0.0.1:%d", sinkPort),
		"--auth-secret", "lg-secret", "--allocations", "3", "--rate", "100", "--size", "200", "--duration", "1500ms", "--json")
	if code != 0 {
		t.Fatalf("loadgen exit %d:\n%s\n%s", code, out, errb)
	}
	var cr bench.ClientResult
	if err := json.Unmarshal([]byte(out), &cr); err != nil {
		t.Fatalf("client json: %v\n%s", err, out)
	}
	s := <-sink
	if s[2] != "0" {
		t.Fatalf("sink exit %s:\n%s\n%s", s[2], s[0], s[1])
	}
	var sr bench.SinkResult
	if err := json.Unmarshal([]byte(s[0]), &sr); err != nil {
		t.Fatalf("sink json: %v\n%s", err, s[0])
	}
	// 3 allocations x 100 pps x 1.5 s, paced: about 450 packets.
	if cr.Allocations != 3 || len(cr.Relayed) != 3 || cr.Sent < 300 || cr.Sent > 600 {
		t.Fatalf("client: %+v", cr)
	}
	// Loopback at this rate loses nothing; allow a packet per flow in
	// flight at the end.
	if sr.Received+3 < cr.Sent || sr.FlowsSeen != 3 || sr.Reflected != sr.Received || sr.Invalid != 0 {
		t.Fatalf("sink: %+v, client sent %d\nprogress:\n%s", sr, cr.Sent, s[1])
	}
	if cr.Returned+6 < cr.Sent || cr.P50us <= 0 || cr.Invalid != 0 {
		t.Fatalf("client: %+v\nprogress:\n%s", cr, errb)
	}
	if !strings.Contains(errb, "relayed 127.0.0.1:") || !strings.Contains(s[1], "received") {
		t.Fatalf("progress lines missing:\nclient:\n%s\nsink:\n%s", errb, s[1])
	}
}

// TestLoadgenSinkSendsToRelayed covers the peer-to-client direction from
// the command line: the client prints its relayed addresses, a sink sends
// to them with --send-to, and the client counts what the relay delivers.
func TestLoadgenSinkSendsToRelayed(t *testing.T) {
	port := freePort(t)
	startDaemon(t, nil, "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--relay-ip", "127.0.0.1",
		"--user", "lg:pw", "--allow-peer", "127.0.0.1/32", "--datapath", "plain",
		"--admin-socket", "off", "--metrics-listen", "off")
	sinkPort := freePort(t)
	client := exec.Command(binary, "loadgen", "--server", fmt.Sprintf("127.0.0.1:%d", port), "--peer", fmt.Sprintf("127.0.0.1:%d", sinkPort),
		"--user", "lg:pw", "--allocations", "2", "--rate", "1", "--size", "100", "--duration", "4s", "--json")
	client.Env = cleanEnv()
	var cout, cerr syncBuffer
	client.Stdout, client.Stderr = &cout, &cerr
	if err := client.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- client.Wait() }()
	var clientErr error
	waited := false
	wait := func() error {
		if !waited {
			clientErr, waited = <-done, true
		}
		return clientErr
	}
	defer func() {
		if !waited {
			client.Process.Kill()
			wait()
		}
	}()
	re := regexp.MustCompile(`relayed (\S+) channel`)
	var relayed []string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline) && len(relayed) < 2; time.Sleep(50 * time.Millisecond) {
		relayed = relayed[:0]
		for _, m := range re.FindAllStringSubmatch(cerr.String(), -1) {
			relayed = append(relayed, m[1])
		}
	}
	if len(relayed) != 2 {
		t.Fatalf("client did not print two relayed addresses:\n%s", cerr.String())
	}
	args := []string{"loadgen", "sink", "--listen", fmt.Sprintf("127.0.0.1:%d", sinkPort), "--rate", "200", "--size", "300", "--duration", "1s", "--json"}
	for _, r := range relayed {
		args = append(args, "--send-to", r)
	}
	sout, serr, code := runBinary(t, nil, args...)
	if code != 0 {
		t.Fatalf("sink exit %d:\n%s\n%s", code, sout, serr)
	}
	var sr bench.SinkResult
	if err := json.Unmarshal([]byte(sout), &sr); err != nil {
		t.Fatalf("sink json: %v\n%s", err, sout)
	}
	if err := wait(); err != nil {
		t.Fatalf("client: %v\n%s", err, cerr.String())
	}
	var cr bench.ClientResult
	if err := json.Unmarshal([]byte(cout.String()), &cr); err != nil {
		t.Fatalf("client json: %v\n%s", err, cout.String())
	}
	// 2 flows x 200 pps x 1 s from the sink; the client sent ~4 per flow.
	if sr.Sent < 300 || cr.Returned+2 < sr.Sent || cr.Invalid != 0 || sr.Received == 0 {
		t.Fatalf("sink sent %d, client got back %d (invalid %d); sink received %d", sr.Sent, cr.Returned, cr.Invalid, sr.Received)
	}
}
