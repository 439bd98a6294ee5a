#!/usr/bin/env bash
# Install what the real-node test cluster and the test images need, from Debian's packages,
# unless it is already there. Idempotent; `make tools` runs it before the tests.
#
#   tests/controlplane/install-node-tools.sh
#
#   containerd, runc                 the container runtime (CRI) under the kubelet
#   containernetworking-plugins      CNI bridge, host-local, loopback (/usr/lib/cni)
#   iptables                         kube-proxy and the CNI bridge, inside the test netns only
#   socat                            the unix-socket bridge to the apiserver in the test netns
#   buildah                          builds Dockerfile.operator/.trainer (tests/images/build.sh)
#   debootstrap                      the test images' Debian base
#   gcc, libc6-dev                   the static pause binary
# containerd's package would start a service under systemd; there is none here, and nothing
# is started: the tests run their own containerd on private paths.
set -euo pipefail

declare -A need=(
  [containerd]=containerd [runc]=runc [/usr/lib/cni/bridge]=containernetworking-plugins
  [iptables]=iptables [socat]=socat [buildah]=buildah [debootstrap]=debootstrap
  [cc]=gcc [/usr/lib/x86_64-linux-gnu/libc.a]=libc6-dev [nsenter]=util-linux [ip]=iproute2
)
missing=()
for what in "${!need[@]}"; do
  if [[ $what == /* ]]; then [[ -e $what ]] && continue
  else command -v "$what" >/dev/null && continue; fi
  missing+=("${need[$what]}")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "install-node-tools.sh: no apt-get; install ${missing[*]} yourself" >&2
  exit 1
fi
sudo=""
if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
echo "install-node-tools.sh: apt-get install ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $sudo apt-get install -y -qq --no-install-recommends \
  "${missing[@]}" >/dev/null
