#!/usr/bin/env bash
# Load: AGENTD_LOAD_SESSIONS (default 500) concurrent proxied sessions running queries for
# AGENTD_LOAD_SECONDS (default 60) plus grant/revoke churn on the control socket, against a
# release build. Prints one "LOAD FIGURES {…}" line (statements sent vs. audit records,
# errors, churn, daemon VmRSS baseline/peak/after) and fails on any error, lost record,
# dropped record or leak.
#   scripts/load.sh                  # 500 sessions, 60 s
#   AGENTD_LOAD_SESSIONS=100 AGENTD_LOAD_SECONDS=10 scripts/load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
export AGENTD_LOAD_SESSIONS="${AGENTD_LOAD_SESSIONS:-500}" AGENTD_LOAD_SECONDS="${AGENTD_LOAD_SECONDS:-60}"
exec cargo test --release -p agentd-tests --test load -- --ignored --nocapture
