#!/usr/bin/env bash
# Build SeaweedFS's `weed` (an Apache-2.0 S3 server, for tests/s3server.py) from the Go
# module proxy and print the bin dir.
#
#   bin=$(tests/s3/build.sh)      # cold: ~15 min on 2 busy cores; warm: instant
#
# Cached in ${LLMTRAIN_CACHE:-$HOME/.cache/llmtrain}/s3/<version>-<hash of this dir>/bin.
# go.mod pins the version (and repeats seaweedfs's own replace line, which Go ignores in a
# dependency). To bump: edit the version below and run
#   GOFLAGS=-mod=mod go get github.com/seaweedfs/seaweedfs/weed@<version>   (in this dir)
# Progress goes to stderr; stdout is only the bin dir.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
module=github.com/seaweedfs/seaweedfs
version=$(awk -v m="$module" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$here/go.mod")
hash=$(cd "$here" && cat build.sh go.mod go.sum | sha256sum | cut -c1-12)
root=${LLMTRAIN_CACHE:-$HOME/.cache/llmtrain}/s3
bin=$root/$version-$hash/bin

if [[ -x $bin/weed ]]; then echo "$bin"; exit 0; fi
command -v go >/dev/null || { echo "s3/build.sh: go not found on PATH" >&2; exit 127; }
mkdir -p "$root"
exec 9>"$root/.lock"  # one builder at a time (parallel pytest sessions)
flock 9
if [[ -x $bin/weed ]]; then echo "$bin"; exit 0; fi

export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0
tmp=$(mktemp -d "$root/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "s3/build.sh: building weed $version ..." >&2
t0=$SECONDS
(cd "$here" && nice -n 10 go build -trimpath -ldflags="-s -w" -o "$tmp/" "$module/weed")
echo "s3/build.sh: ... done in $((SECONDS - t0))s" >&2
mkdir -p "$(dirname "$bin")"
rm -rf "$bin"
mv "$tmp" "$bin"
chmod 755 "$bin"
trap - EXIT
echo "$bin"
