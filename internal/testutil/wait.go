package testutil

import (
	"testing"
	"time"
)

// Poll calls cond every few milliseconds until it holds or timeout passes,
// and reports whether it held. For a test that says itself what went
// wrong afterwards; WaitFor fails the test instead.
func Poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// WaitFor polls cond until it holds, and fails the test, naming what, when
// timeout passes first.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if !Poll(timeout, cond) {
		t.Fatalf("timed out after %s waiting for %s", timeout, what)
	}
}
