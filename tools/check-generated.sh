#!/usr/bin/env bash
# Regenerates the bpf2go output into a scratch copy of the tree and fails if
# it differs from what is committed: the committed objects must come from
# the committed C source.
set -euo pipefail
cd "$(dirname "$0")/.."
# The committed objects were built by Debian bookworm's clang 14; another
# major version emits different (equally valid) bytes, so only 14 compares.
want_clang=14
have_clang=$(clang --version 2>/dev/null | sed -n 's/.*clang version \([0-9]*\)\..*/\1/p' | head -1)
if [ "$have_clang" != "$want_clang" ]; then
	echo "check-generated: clang ${have_clang:-missing} is not $want_clang, which built the committed objects; skipped"
	exit 0
fi
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
