#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60) with libFuzzer, starting from the
# committed seeds in fuzz/seeds/<target>/ (captured from real psql/pgbench/agentd traffic).
# Needs the nightly toolchain; installs cargo-fuzz when missing. Prints one summary line per
# target (executions, seconds, corpus size) and exits non-zero on the first crash, whose
# input is left in fuzz/artifacts/<target>/ (turn it into a regression test, then fix).
#   fuzz/run.sh          # 60 s per target
#   fuzz/run.sh 600      # 10 min per target
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
targets=(startup_packet frontend_messages control_frame config_toml)
cargo +nightly fuzz build -O
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true
  log="$(mktemp)"
  if ! cargo +nightly fuzz run -O "$t" "corpus/$t" -- -max_total_time="$seconds" \
      -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz: $t CRASHED; input in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')"
  echo "fuzz: $t clean: $execs execs in ${seconds}s, corpus $(ls "corpus/$t" | wc -l) inputs"
  rm -f "$log"
done
