#!/usr/bin/env bash
# Runs every Fuzz* target in the module for the given time each (default 10s).
# Go runs one fuzz target per `go test` invocation, so this finds them all.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime="${1:-10s}"
found=0
while IFS= read -r file; do
	dir=$(dirname "$file")
	for target in $(grep -oE '^func (Fuzz[A-Za-z0-9_]+)' "$file" | awk '{print $2}'); do
		found=$((found + 1))
		echo "fuzz: ./$dir $target ($fuzztime)"
		go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "./$dir"
	done
done < <(git ls-files '*_test.go' 2>/dev/null | xargs -r grep -l '^func Fuzz' || true)
echo "fuzz: $found targets run"
