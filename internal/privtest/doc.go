// Package privtest decides what a test that needs root does without it: it
// skips, unless HYBRIDRELAY_REQUIRE_PRIV=1 (set by .ci/run), in which case a
// missing privilege fails the test so CI can never go green by skipping.
package privtest
