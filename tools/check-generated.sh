#!/usr/bin/env bash
# Regenerates the bpf2go output into a scratch copy of the tree and fails if
# it differs from what is committed: the committed objects must come from
# the committed C source.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git ls-files -z | xargs -0 cp --parents -t "$tmp"
(cd "$tmp" && go generate ./pkg/loader/... >/dev/null)
status=0
files=$(cd "$tmp" && ls pkg/loader/*_bpfe[lb].go pkg/loader/*_bpfe[lb].o 2>/dev/null || true)
if [ -z "$files" ]; then
	echo "check-generated: go generate produced no bpf2go output" >&2
	exit 1
fi
for f in $files; do
	if ! cmp -s "$tmp/$f" "$f"; then
		echo "check-generated: $f is not current; run 'make generate' and commit" >&2
		status=1
	fi
done
[ $status -ne 0 ] || echo "check-generated: $(echo $files | wc -w) bpf2go files match the C source"
exit $status
