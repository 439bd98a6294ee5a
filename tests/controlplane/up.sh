#!/usr/bin/env bash
# Start the test control plane (building it first if needed) and keep it up until Ctrl-C.
#
#   tests/controlplane/up.sh [--nodes 3] [--workdir DIR]
#
# stdout gets one line, the kubeconfig path (as cluster-admin); stderr says the rest:
#   export KUBECONFIG=<that path> PATH=<bin dir>:$PATH   # kubectl, helm
exec python3 "$(dirname "$0")/cluster.py" "$@"
