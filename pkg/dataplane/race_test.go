//go:build race

package dataplane

// raceEnabled: the race detector allocates on its own, so allocation
// counts through goroutines are not meaningful.
const raceEnabled = true
