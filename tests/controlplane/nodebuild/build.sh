#!/usr/bin/env bash
# Build the test cluster's real node binaries (kubelet, kube-proxy, CoreDNS) from the Go
# module proxy and print the bin dir.
#
#   bin=$(tests/controlplane/nodebuild/build.sh)   # cold: ~4 min on 2 cores; warm: instant
#
# Like ../build.sh, and separate from it so that neither invalidates the other's cache:
#   ${LLMTRAIN_CACHE:-$HOME/.cache/llmtrain}/node/<k8s-version>-<hash>/bin
# keyed by a hash of this script and the wrapper modules below it. Progress goes to stderr;
# stdout is only the bin dir.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bins=(kubelet kube-proxy coredns)

modver() { # modver DIR MODULE -> the version DIR/go.mod requires
  awk -v m="$2" '$1 == m && $2 ~ /^v/ { print $2; exit } $1 == "require" && $2 == m { print $3; exit }' "$1/go.mod"
}
k8s_version=$(modver "$here/kubelet" k8s.io/kubernetes)
coredns_version=$(modver "$here/coredns" github.com/coredns/coredns)
hash=$(cd "$here" && cat build.sh ./*/go.mod ./*/go.sum ./*/*.go 2>/dev/null | sha256sum | cut -c1-12)
root=${LLMTRAIN_CACHE:-$HOME/.cache/llmtrain}/node
bin=$root/$k8s_version-$hash/bin

have_all() { for b in "${bins[@]}"; do [[ -x $bin/$b ]] || return 1; done; }
if have_all; then echo "$bin"; exit 0; fi

command -v go >/dev/null || { echo "nodebuild/build.sh: go not found on PATH" >&2; exit 127; }
mkdir -p "$root"
exec 9>"$root/.lock"
flock 9
if have_all; then echo "$bin"; exit 0; fi

export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0
tmp=$(mktemp -d "$root/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

gobuild() { # gobuild DIR LDFLAGS PKG...
  local dir=$1 ldflags=$2; shift 2
  echo "nodebuild/build.sh: building $* ..." >&2
  local t0=$SECONDS
  (cd "$here/$dir" && go build -trimpath -ldflags="-s -w $ldflags" -o "$tmp/" "$@")
  echo "nodebuild/build.sh: ... done in $((SECONDS - t0))s" >&2
}

minor=${k8s_version#v1.}; minor=${minor%%.*}
k8s_ldflags=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $p.gitVersion=$k8s_version -X $p.gitMajor=1 -X $p.gitMinor=$minor"
  k8s_ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done
t_all=$SECONDS
gobuild kubelet "$k8s_ldflags" k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy
gobuild coredns "-X github.com/coredns/coredns/coremain.GitCommit=$coredns_version" .
echo "nodebuild/build.sh: all built in $((SECONDS - t_all))s" >&2

mkdir -p "$(dirname "$bin")"
rm -rf "$bin"
mv "$tmp" "$bin"
chmod 755 "$bin"
trap - EXIT
echo "$bin"
