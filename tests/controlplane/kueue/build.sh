#!/usr/bin/env bash
# Build Kueue's controller-manager from the Go module proxy, copy its CRDs out of the
# downloaded module, and print the cache dir (bin/kueue, crds/*.yaml).
#
#   dir=$(tests/controlplane/kueue/build.sh)   # cold: a few min on 2 cores; warm: instant
#
# Like ../build.sh, and separate from it so neither invalidates the other's cache:
#   ${LLMTRAIN_CACHE:-$HOME/.cache/llmtrain}/kueue/<kueue-version>-<hash>/
# keyed by a hash of this script and mod/go.{mod,sum}. The CRDs come from the same module
# version the binary is built from (config/components/crd/bases), never from GitHub.
# Progress goes to stderr; stdout is only the dir.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
version=$(awk '$1 == "sigs.k8s.io/kueue" && $2 ~ /^v/ { print $2; exit }' "$here/mod/go.mod")
hash=$(cd "$here" && cat build.sh mod/go.mod mod/go.sum | sha256sum | cut -c1-12)
root=${LLMTRAIN_CACHE:-$HOME/.cache/llmtrain}/kueue
out=$root/$version-$hash

have_all() { [[ -x $out/bin/kueue && -s $out/crds/kueue.x-k8s.io_workloads.yaml ]]; }
if have_all; then echo "$out"; exit 0; fi

command -v go >/dev/null || { echo "kueue/build.sh: go not found on PATH" >&2; exit 127; }
mkdir -p "$root"
exec 9>"$root/.lock"
flock 9
if have_all; then echo "$out"; exit 0; fi

export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0
tmp=$(mktemp -d "$root/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin" "$tmp/crds"

echo "kueue/build.sh: building sigs.k8s.io/kueue/cmd/kueue $version ..." >&2
t0=$SECONDS
(cd "$here/mod" && nice -n 10 go build -trimpath -o "$tmp/bin/kueue" \
  -ldflags="-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$version" sigs.k8s.io/kueue/cmd/kueue)
echo "kueue/build.sh: ... done in $((SECONDS - t0))s" >&2

moddir=$(cd "$here/mod" && go list -m -f '{{.Dir}}' sigs.k8s.io/kueue)
cp "$moddir"/config/components/crd/bases/*.yaml "$tmp/crds/"
chmod -R u+w "$tmp"

mkdir -p "$root"
rm -rf "$out"
mv "$tmp" "$out"
chmod 755 "$out"
trap - EXIT
echo "$out"
