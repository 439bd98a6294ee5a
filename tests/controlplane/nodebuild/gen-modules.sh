#!/usr/bin/env bash
# Regenerate the wrapper Go modules that build the test cluster's real node.
#
#   tests/controlplane/nodebuild/gen-modules.sh      # after changing a version below
#
# Only needed when bumping a version; the generated go.mod/go.sum are committed and
# nodebuild/build.sh uses them as they are. These modules live one level below
# tests/controlplane/ so that ../build.sh (which hashes ./*/go.mod) is not rebuilt by them.
#
#   kubelet/   kubelet + kube-proxy from k8s.io/kubernetes, the same version and staging pins
#              as ../k8s (so they share Go's build cache with the control plane)
#   coredns/   CoreDNS with only the plugins the test cluster uses (main.go); no `forward`,
#              so it can never query an upstream resolver
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.35.4}
COREDNS_VERSION=${COREDNS_VERSION:-v1.15.0}

here=$(cd "$(dirname "$0")" && pwd)
export GOFLAGS=-mod=mod GOTOOLCHAIN=local

fresh() { # fresh DIR MODULE -- start an empty module in DIR
  rm -f "$1/go.mod" "$1/go.sum"
  (cd "$1" && go mod init "$2" >/dev/null 2>&1 && go mod edit -go=1.25.0)
}

# --- kubelet, kube-proxy (see ../gen-modules.sh for why staging modules are pinned)
staging=v0.${K8S_VERSION#v1.}
upstream=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | jq -r .GoMod)
fresh "$here/kubelet" llmtrain/tests/controlplane/nodebuild/kubelet
(
  cd "$here/kubelet"
  go mod edit -json "$upstream" |
    jq -r '.Replace[] | select(.New.Path | startswith("./staging/")) | .Old.Path' |
    while read -r mod; do go mod edit -replace="$mod=$mod@$staging"; done
  for cmd in kubelet kube-proxy; do
    go get -tool "k8s.io/kubernetes/cmd/$cmd@$K8S_VERSION"
  done
  go mod tidy
  # The build (linux, CGO_ENABLED=0, -mod=readonly) must find every package; a module that
  # `go get -tool` + tidy left out shows up here as "go get ..." advice.
  CGO_ENABLED=0 GOFLAGS=-mod=readonly go list -deps \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy >/dev/null
)

# --- CoreDNS: a main.go of our own lists the plugins (upstream's core/plugin/zplugin.go
# registers all of them, and their dependencies take ~8 min to build on 2 cores).
fresh "$here/coredns" llmtrain/tests/controlplane/nodebuild/coredns
(
  cd "$here/coredns"
  go get "github.com/coredns/coredns@$COREDNS_VERSION"
  go mod tidy
  CGO_ENABLED=0 GOFLAGS=-mod=readonly go list -deps . >/dev/null
)

echo "regenerated go.mod/go.sum under $here/{kubelet,coredns}"
