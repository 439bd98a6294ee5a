#!/usr/bin/env bash
# Install Prometheus and promtool (Debian's `prometheus` package) unless promtool is already
# on PATH. Idempotent; `make tools` runs it before the tests.
#
#   tests/monitoring/install-prometheus.sh
set -euo pipefail

if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "install-prometheus.sh: no apt-get; install prometheus and promtool yourself" >&2
  exit 1
fi
sudo=""
if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
echo "install-prometheus.sh: apt-get install prometheus" >&2
$sudo apt-get update -qq
# policy-rc.d or not, the tests start their own Prometheus: keep the packaged service off.
DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $sudo apt-get install -y -qq --no-install-recommends \
  prometheus >/dev/null
command -v promtool >/dev/null && command -v prometheus >/dev/null
