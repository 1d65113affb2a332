// Package netns builds the private network topologies that the end-to-end
// tests, benchmarks and `hybridrelay compare` run in: network namespaces
// joined by veth pairs, addressed only from the benchmarking ranges
// 198.18.0.0/15 and 2001:2::/48. Everything a Topology makes it removes on
// Close, and Close is safe on every exit path.
package netns
