#!/usr/bin/env bash
# Builds the agentd .deb: release binaries, shell completions and man pages generated from
# the CLI's clap definition, then cargo-deb (installed when missing). Prints the .deb's path
# on its last line. Usage: packaging/deb/build.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked

cargo build --release --locked -p agentd -p agentd-mcp --bins

assets=target/assets
rm -rf "$assets"
mkdir -p "$assets/completions" "$assets/man"
agentd=target/release/agentd
"$agentd" completions bash >"$assets/completions/agentd.bash"
"$agentd" completions zsh >"$assets/completions/_agentd"
"$agentd" completions fish >"$assets/completions/agentd.fish"
"$agentd" man --out "$assets/man" >/dev/null
gzip -9n "$assets"/man/*.1
for f in "$assets"/completions/* "$assets"/man/*; do
  [ -s "$f" ] || { echo "build.sh: $f is empty" >&2; exit 1; }
done

# Stripped: the release profile keeps line tables (debug = 1), which the package does not need.
cargo deb -p agentd --no-build --strip --quiet | tail -n 1
