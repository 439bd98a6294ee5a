#!/usr/bin/env bash
# Build the test control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok, helm) from the Go module proxy and print the
# bin dir.
#
#   bin=$(tests/controlplane/build.sh)      # cold: ~tens of minutes on 2 cores; warm: instant
#
# Binaries go to a cache outside the repo, keyed by the Kubernetes version and
# a hash of the wrapper modules, so a warm run is a few `test -x` calls:
#   ${LLMTRAIN_CACHE:-$HOME/.cache/llmtrain}/controlplane/<k8s-version>-<hash>/bin
# Progress goes to stderr; stdout is only the bin dir.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bins=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok helm)

modver() { # modver DIR MODULE -> the version DIR/go.mod requires
  awk -v m="$2" '$1 == m && $2 ~ /^v/ { print $2; exit } $1 == "require" && $2 == m { print $3; exit }' "$1/go.mod"
}
k8s_version=$(modver "$here/k8s" k8s.io/kubernetes)
helm_version=$(modver "$here/helm" helm.sh/helm/v3)
kwok_version=$(modver "$here/kwok" sigs.k8s.io/kwok)
hash=$(cd "$here" && cat build.sh ./*/go.mod ./*/go.sum ./*/*.go | sha256sum | cut -c1-12)
root=${LLMTRAIN_CACHE:-$HOME/.cache/llmtrain}/controlplane
bin=$root/$k8s_version-$hash/bin

have_all() { for b in "${bins[@]}"; do [[ -x $bin/$b ]] || return 1; done; }
if have_all; then echo "$bin"; exit 0; fi

command -v go >/dev/null || { echo "build.sh: go not found on PATH" >&2; exit 127; }
mkdir -p "$root"
# One builder at a time (parallel pytest sessions, a human running up.sh).
exec 9>"$root/.lock"
flock 9
if have_all; then echo "$bin"; exit 0; fi

export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0
# 2-core machines: go's default -p is GOMAXPROCS; linking kube-apiserver
# takes ~2 GiB, so -p stays at the core count.
tmp=$(mktemp -d "$root/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

gobuild() { # gobuild DIR LDFLAGS PKG...
  local dir=$1 ldflags=$2; shift 2
  echo "build.sh: building $* ..." >&2
  local t0=$SECONDS
  (cd "$here/$dir" && go build -trimpath -ldflags="-s -w $ldflags" -o "$tmp/" "$@")
  echo "build.sh: ... done in $((SECONDS - t0))s" >&2
}

minor=${k8s_version#v1.}; minor=${minor%%.*}
k8s_ldflags=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $p.gitVersion=$k8s_version -X $p.gitMajor=1 -X $p.gitMinor=$minor"
  k8s_ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done
t_all=$SECONDS
gobuild etcd "" .
gobuild kwok "-X sigs.k8s.io/kwok/pkg/consts.Version=${kwok_version#v}" sigs.k8s.io/kwok/cmd/kwok
gobuild helm "-X helm.sh/helm/v3/internal/version.version=$helm_version -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
  helm.sh/helm/v3/cmd/helm
gobuild k8s "$k8s_ldflags" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
echo "build.sh: all built in $((SECONDS - t_all))s" >&2

mkdir -p "$(dirname "$bin")"
rm -rf "$bin"
mv "$tmp" "$bin"
chmod 755 "$bin"
trap - EXIT
echo "$bin"
