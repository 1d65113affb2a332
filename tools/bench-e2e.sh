#!/bin/sh
# bench-e2e.sh: the netns benchmark of docs/design.md "Benchmark method": every
# datapath against the direct path, alternating, repeated, both directions,
# IPv4 and IPv6, 120/1200-byte one-flow floods and the many-flow case.
#
# Usage: tools/bench-e2e.sh [BINARY] [OUTDIR]      (root; about 45 min with the defaults)
# Environment: BENCH_DURATION (10s), BENCH_WARMUP (2s), BENCH_REPEATS (5),
# BENCH_DATAPATHS (xdp,gso,plain), BENCH_FLOWS (1,500), BENCH_ARGS (extra
# compare flags).
#
# Writes OUTDIR/table.txt, OUTDIR/report.json, OUTDIR/chart.svg and
# OUTDIR/progress.log (one line per run), and prints the table. The host is
# often shared: look at the "bg CPU %" column before trusting a number.
set -eu

bin=${1:-bin/hybridrelay}
out=${2:-bench-results/$(date -u +%Y%m%dT%H%M%SZ)}

if [ "$(id -u)" != 0 ]; then
	echo "bench-e2e: needs root (network namespaces)" >&2
	exit 2
fi
if [ ! -x "$bin" ]; then
	echo "bench-e2e: $bin not found; run make build" >&2
	exit 2
fi
mkdir -p "$out"

# shellcheck disable=SC2086 # BENCH_ARGS is a list of flags
"$bin" compare \
	--duration "${BENCH_DURATION:-10s}" \
	--warmup "${BENCH_WARMUP:-2s}" \
	--repeats "${BENCH_REPEATS:-5}" \
	--datapaths "${BENCH_DATAPATHS:-xdp,gso,plain}" \
	--flows "${BENCH_FLOWS:-1,500}" \
	--size 120,1200 --direction both --family both \
	--json-out "$out/report.json" --chart "$out/chart.svg" \
	${BENCH_ARGS:-} \
	>"$out/table.txt" 2>"$out/progress.log" || {
	rc=$?
	echo "bench-e2e: compare failed ($rc); see $out/progress.log" >&2
	tail -n 20 "$out/progress.log" >&2
	exit "$rc"
}
cat "$out/table.txt"
echo "bench-e2e: results in $out" >&2
