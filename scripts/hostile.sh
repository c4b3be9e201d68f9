#!/usr/bin/env bash
# Hostile input at full size: the hostile-input tests with a storm of
# AGENTD_HOSTILE_CONNECTIONS (default 10000) connections that never authenticate (the
# default `cargo test` run uses 300). Prints the storm's outcome and the daemon's VmRSS.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
export AGENTD_HOSTILE_CONNECTIONS="${AGENTD_HOSTILE_CONNECTIONS:-10000}"
exec cargo test --release -p agentd-tests --test hostile -- --nocapture "$@"
