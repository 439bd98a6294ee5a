#!/usr/bin/env bash
# Build the test images for real, from Dockerfile.operator and Dockerfile.trainer, and load
# them into the test node's containerd store. No registry is reachable here, so every base
# is made locally:
#   base     `debootstrap --variant=minbase bookworm` + python3.11 (Debian's 3.11 = the project's)
#   uv       FROM scratch + the uv binary of the repo's venv (the pin in constraints.txt)
#   pause    FROM scratch + tests/images/pause.c, static; tagged as containerd's sandbox image
# and then `buildah build --build-arg BASE=<base> --build-arg UV_IMAGE=<uv>` of each
# Dockerfile as it is: a wheel of the repo installed with the pins into /opt/llmtrain.
#
#   tests/images/build.sh          # or `make images`; prints NAME=REF lines (stdout only)
#
# Output, stdout:  operator=localhost/llmtrain/operator:<hash>  trainer=...  pause=...
#                  containerd_root=<dir>  (the store tests/controlplane/node.py runs on)
# Each tag is a hash of that image's inputs (Dockerfile, pyproject.toml, constraints.txt,
# README.md, operator/, trainer/, the base recipe, uv's version, this script), so a warm run
# is a few stat calls. Caches, under ${LLMTRAIN_CACHE:-~/.cache/llmtrain}:
#   images/base-<hash>.tar      the debootstrap rootfs
#   images/buildah-<hash>/      buildah's store (--layers), keyed by what the dependency layers
#                               depend on: a source change rebuilds only the small project
#                               layers; a new key drops the old store whole
#   containerd/root/            containerd's root; the test node's containerd runs on it, so
#                               nothing is imported on a warm start. Its overlayfs snapshots
#                               are hard links of buildah's layer dirs (link_import.py): seconds
#                               instead of minutes, and one copy on disk for both stores
# Builds run with `--isolation chroot`: no network namespace, no CNI, nothing configured on
# the host (buildah's default OCI isolation would add a bridge, iptables rules and
# ip_forward to the root network namespace). Only PyPI (uv, through the host's warm uv cache)
# and Debian (apt, debootstrap) are reached.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
here=$repo/tests/images
cache=${LLMTRAIN_CACHE:-$HOME/.cache/llmtrain}
ctr_dir=$cache/containerd
ctr_root=$ctr_dir/root
log() { echo "images/build.sh: $*" >&2; }

# --- recipe of the local base image (part of every hash)
SUITE=bookworm
MIRROR=${LLMTRAIN_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# python3.11 for the venv; ca-certificates libgomp1 procps because Dockerfile.trainer's apt step
# asks for them (then it only re-checks), so the base needs no network besides apt's lists.
BASE_PACKAGES=python3.11,ca-certificates,libgomp1,procps
# Bump when a change here alters what the base or the images contain (it is in every hash);
# other edits of this script rebuild nothing.
RECIPE=1
SANDBOX_IMAGE=registry.k8s.io/pause:3.10.1   # tests/controlplane/node.py sets it in containerd

for tool in buildah debootstrap containerd ctr; do
  command -v "$tool" >/dev/null || {
    log "$tool not found; run tests/controlplane/install-node-tools.sh (make tools)"; exit 127; }
done
uv=${UV:-$repo/.venv/bin/uv}
[[ -x $uv ]] || uv=$(command -v uv) || { log "uv not found (make .venv/.installed)"; exit 127; }
uv_version=$("$uv" --version | awk '{print $2}')

sha() { sha256sum | cut -c1-12; }
# The build context as .dockerignore lets it through (its `!` lines): sources, no caches.
context_files() {
  local p
  echo .dockerignore
  sed -n 's#^!\(.*\)#\1#p' "$repo/.dockerignore" | sed 's#/$##' | while read -r p; do
    [[ -e $repo/$p ]] && (cd "$repo" && find "$p" -type f ! -name '*.pyc' ! -path '*/__pycache__/*')
  done | LC_ALL=C sort
}
context_hash=$(cd "$repo" && context_files | xargs sha256sum | sha)
base_hash=$(printf '%s\n' "$SUITE" "$MIRROR" "$BASE_PACKAGES" "$RECIPE" | sha)
base_ref=localhost/llmtrain/test-base:$base_hash
uv_ref=localhost/llmtrain/uv:$uv_version
pause_hash=$(cat "$here/pause.c" <(echo "$RECIPE") | sha)
operator_ref=localhost/llmtrain/operator:$(cat "$repo/Dockerfile.operator" <(echo "$context_hash $base_hash $uv_version") | sha)
trainer_ref=localhost/llmtrain/trainer:$(cat "$repo/Dockerfile.trainer" <(echo "$context_hash $base_hash $uv_version") | sha)
deps_hash=$(cd "$repo" && cat Dockerfile.operator Dockerfile.trainer pyproject.toml constraints.txt \
  <(echo "$base_hash $uv_version") | sha)
store=$cache/images/buildah-$deps_hash

stamp() { echo "$ctr_root/llmtrain-imported/$(echo "$1" | tr '/:' '__')"; }
imported() { [[ -e $(stamp "$1") ]]; }
result() {
  echo "operator=$operator_ref"
  echo "trainer=$trainer_ref"
  echo "pause=$SANDBOX_IMAGE"
  echo "pause_hash=$pause_hash"
  echo "containerd_root=$ctr_root"
}
all_imported() {
  imported "$operator_ref" && imported "$trainer_ref" && imported "$SANDBOX_IMAGE@$pause_hash"
}
if all_imported; then result; exit 0; fi

mkdir -p "$ctr_dir"
# One builder at a time, and never while a test node runs containerd on the same root
# (tests/controlplane/node.py takes this lock for its whole life).
exec 9>"$ctr_dir/.lock"
if ! flock -w "${LLMTRAIN_LOCK_WAIT:-1800}" 9; then
  log "$ctr_dir/.lock is held (a real-node cluster is running?)"; exit 75
fi
if all_imported; then result; exit 0; fi

mkdir -p "$cache/images"
tmp=$(mktemp -d "$cache/images/.build.XXXXXX")
# buildah's locks and mount state, one per store (tmpfs: gone at reboot, like the mounts).
runroot=/run/llmtrain-buildah-$(echo "$store" | sha)
ctrd_pid=""
B=(buildah --root "$store" --runroot "$runroot" --storage-driver overlay)
cleanup() {
  if [[ -n $ctrd_pid ]]; then kill "$ctrd_pid" 2>/dev/null || true; wait "$ctrd_pid" 2>/dev/null || true; fi
  # buildah keeps the working container of a `FROM ... AS uv` stage mounted; with none left,
  # its store unmounts itself.
  [[ -d $store ]] && "${B[@]}" rm --all >/dev/null 2>&1 || true
  grep -q " $store/" /proc/mounts || rm -rf "$runroot"
  rm -rf "$tmp"
}
trap cleanup EXIT
export BUILDAH_ISOLATION=chroot
has_image() { "${B[@]}" inspect --type image "$1" >/dev/null 2>&1; }
t_all=$SECONDS
# Older stores and base tarballs go (they hold GBs); a store whose key matches is reused.
for old in "$cache"/images/buildah-* "$cache"/images/base-*.tar; do
  [[ -e $old && $old != "$store" && $old != "$cache/images/base-$base_hash.tar" ]] || continue
  log "removing $old"
  old_runroot=/run/llmtrain-buildah-$(echo "$old" | sha)
  buildah --root "$old" --runroot "$old_runroot" --storage-driver overlay rm --all >/dev/null 2>&1 || true
  rm -rf "$old" "$old_runroot"
done
mkdir -p "$store"

# --- base: debootstrap (kept as a tarball), then one layer
base_tar=$cache/images/base-$base_hash.tar
if ! has_image "$base_ref"; then
  if [[ ! -s $base_tar ]]; then
    log "debootstrap --variant=minbase $SUITE (+$BASE_PACKAGES) ..."
    t0=$SECONDS
    debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$tmp/rootfs" "$MIRROR" \
      >"$tmp/debootstrap.log" 2>&1 || { tail -20 "$tmp/debootstrap.log" >&2; exit 1; }
    # What a base image leaves out: package caches and lists, the host's resolv.conf/hostname.
    rm -rf "$tmp/rootfs"/var/cache/apt/*.bin "$tmp/rootfs"/var/cache/apt/archives/*.deb \
      "$tmp/rootfs"/var/lib/apt/lists/* "$tmp/rootfs"/var/log/* "$tmp/rootfs"/tmp/* \
      "$tmp/rootfs"/etc/resolv.conf "$tmp/rootfs"/etc/hostname
    tar -C "$tmp/rootfs" --numeric-owner -cf "$base_tar.part" . && mv "$base_tar.part" "$base_tar"
    rm -rf "$tmp/rootfs"
    log "... debootstrap done in $((SECONDS - t0))s"
  fi
  ctr_id=$("${B[@]}" from scratch)
  mnt=$("${B[@]}" mount "$ctr_id")
  tar -C "$mnt" --numeric-owner -xpf "$base_tar"
  "${B[@]}" umount "$ctr_id" >/dev/null
  "${B[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd /bin/bash --label io.llmtrain.base="debootstrap --variant=minbase $SUITE" "$ctr_id"
  "${B[@]}" commit -q --rm "$ctr_id" "$base_ref" >/dev/null
fi

# --- uv and pause: FROM scratch, one file each
if ! has_image "$uv_ref"; then
  mkdir -p "$tmp/uv" && cp "$(readlink -f "$uv")" "$tmp/uv/uv"
  printf 'FROM scratch\nCOPY uv /uv\n' >"$tmp/uv/Dockerfile"
  "${B[@]}" build -q -t "$uv_ref" "$tmp/uv" >/dev/null
fi
pause_build_ref=localhost/llmtrain/pause:$pause_hash
if ! has_image "$pause_build_ref"; then
  mkdir -p "$tmp/pause"
  cc -Os -static -o "$tmp/pause/pause" "$here/pause.c"
  printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' \
    >"$tmp/pause/Dockerfile"
  "${B[@]}" build -q -t "$pause_build_ref" "$tmp/pause" >/dev/null
fi

# --- the two Dockerfiles, as they are
# The host's CA bundle and uv config (system certificates: the egress proxy, if any, signs
# with a CA the host trusts) and the warm uv cache are bind mounts, never part of a layer.
printf 'system-certs = true\n' >"$tmp/uv.toml"
build_args=(--layers --build-arg "BASE=$base_ref" --build-arg "UV_IMAGE=$uv_ref"
  --build-arg UV_CACHE_DIR=/uv-cache -v "$("$uv" cache dir)":/uv-cache
  -v "$tmp/uv.toml":/etc/uv/uv.toml:ro)
host_ca=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
[[ -f $host_ca ]] && build_args+=(-v "$host_ca":/etc/ssl/certs/ca-certificates.crt:ro)
for name in operator trainer; do
  ref_var=${name}_ref; ref=${!ref_var}
  if imported "$ref" || has_image "$ref"; then continue; fi
  log "buildah build -f Dockerfile.$name -t $ref ..."
  t0=$SECONDS
  (cd "$repo" && "${B[@]}" build "${build_args[@]}" -f "Dockerfile.$name" -t "$ref" .) \
    >"$tmp/$name.log" 2>&1 || { tail -40 "$tmp/$name.log" >&2; exit 1; }
  log "... $name built in $((SECONDS - t0))s ($("${B[@]}" images --format '{{.Size}}' "$ref"))"
done

# buildah keeps the working container of a `FROM ... AS uv` stage mounted, and with it a bind
# mount of its store, across which link_import.py's hard links would fail (EXDEV).
"${B[@]}" rm --all >/dev/null

# --- import into the node's containerd store (a private containerd, no CRI, no network)
mkdir -p "$ctr_root/llmtrain-imported" "$tmp/state"
cat >"$tmp/containerd.toml" <<TOML
version = 2
root = "$ctr_root"
state = "$tmp/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$tmp/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$tmp/opt"
# No GC while link_import.py commits snapshots that no image references yet; the explicit
# \`images rm --sync\` below still collects.
[plugins."io.containerd.gc.v1.scheduler"]
  deletion_threshold = 0
  mutation_threshold = 100000000
  startup_delay = "100000h"
TOML
containerd --config "$tmp/containerd.toml" >"$tmp/containerd.log" 2>&1 &
ctrd_pid=$!
C=(ctr --address "$tmp/containerd.sock" --namespace k8s.io)
for _ in $(seq 100); do "${C[@]}" version >/dev/null 2>&1 && break; sleep 0.1; done
"${C[@]}" version >/dev/null || { tail -20 "$tmp/containerd.log" >&2; exit 1; }

import() { # import BUILDAH_REF TARGET_REF STAMP_KEY
  local t0=$SECONDS
  # Fast: hard-link buildah's layer dirs into containerd's snapshots (seconds, no second copy).
  if python3 "$here/link_import.py" --buildah-root "$store" --buildah-runroot "$runroot" \
       --address "$tmp/containerd.sock" "$1" "$2" 2>"$tmp/link.log" &&
     "${C[@]}" images check "name==$2" | awk 'NR == 2 { exit $NF != "true" }'; then
    log "linked $2 in $((SECONDS - t0))s ($(tail -1 "$tmp/link.log"))"
    touch "$(stamp "$3")"
    return
  fi
  log "link_import.py failed, streaming instead: $(tail -1 "$tmp/link.log")"
  # docker-archive keeps the layers uncompressed (oci-archive would gzip GBs on one core),
  # and ctr reads it as a stream: no archive on disk.
  "${B[@]}" push -q "$1" "docker-archive:/dev/stdout:$2" | "${C[@]}" images import - >/dev/null
  "${C[@]}" images check "name==$2" | grep -q complete
  # Unpacked, the layer blobs are a second copy of the snapshots (GBs): the CRI needs only the
  # manifest, the config and the snapshots, as with its own discard_unpacked_layers.
  local manifest
  manifest=$("${C[@]}" images ls "name==$2" | awk 'NR == 2 { print $3 }')
  "${C[@]}" content get "$manifest" |
    python3 -c 'import json, sys; print(*(l["digest"] for l in json.load(sys.stdin)["layers"]))' |
    xargs -r "${C[@]}" content rm >/dev/null
  touch "$(stamp "$3")"
  log "imported $2 in $((SECONDS - t0))s"
}
imported "$SANDBOX_IMAGE@$pause_hash" || import "$pause_build_ref" "$SANDBOX_IMAGE" "$SANDBOX_IMAGE@$pause_hash"
for ref in "$operator_ref" "$trainer_ref"; do
  imported "$ref" || import "$ref" "$ref" "$ref"
done

# --- forget older builds, and the CRI's by-ID names of them (sha256:...; it makes them anew
# for what is here when it starts): containerd's GC then drops their snapshots
for old in $("${C[@]}" images ls -q); do
  case $old in
    "$operator_ref" | "$trainer_ref" | "$SANDBOX_IMAGE") ;;
    *) "${C[@]}" images rm --sync "$old" >/dev/null ;;
  esac
done
for f in "$ctr_root"/llmtrain-imported/*; do
  case $(basename "$f") in
    "$(basename "$(stamp "$operator_ref")")" | "$(basename "$(stamp "$trainer_ref")")" | \
      "$(basename "$(stamp "$SANDBOX_IMAGE@$pause_hash")")") ;;
    *) rm -f "$f" ;;
  esac
done
for old in $("${B[@]}" images --format '{{.Name}}:{{.Tag}}' | grep '^localhost/llmtrain/' || true); do
  case $old in
    "$operator_ref" | "$trainer_ref" | "$base_ref" | "$uv_ref" | "$pause_build_ref") ;;
    *) "${B[@]}" rmi "$old" >/dev/null 2>&1 || true ;;
  esac
done
log "all done in $((SECONDS - t_all))s"
result
