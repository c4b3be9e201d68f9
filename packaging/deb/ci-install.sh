#!/usr/bin/env bash
# CI: build the .deb, install it with dpkg, check what the maintainer scripts made, start
# the daemon from the installed layout as the `agentd` user WITHOUT systemd (containers have
# none), smoke-test it as a client and a non-client user, run the red team against the
# installed layout when the suite exists, then purge the package so a rerun starts clean.
#
# Needs root and dpkg. Usage: packaging/deb/ci-install.sh
#
# Without systemd the unit's work is done by hand: /run/agentd is created as
# systemd-tmpfiles would (the package's tmpfiles entry, else `install -d`), and the daemon
# is started with `setpriv --reuid agentd --regid agentd --init-groups --no-new-privs
# /usr/bin/agentd daemon --system`, its ready line read from a FIFO.
set -euo pipefail
cd "$(dirname "$0")/../.."

say() { echo "ci-install: $*"; }
fail() { echo "ci-install: FAILED: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "must run as root"
command -v dpkg >/dev/null || fail "needs dpkg"

CLIENT=agentd-ci-client
OTHER=agentd-ci-other
tmp=$(mktemp -d /tmp/agentd-ci-install.XXXXXX)
chmod 0755 "$tmp"
daemon_pid=""

cleanup() {
  local rc=$?
  if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
    kill -TERM "$daemon_pid" 2>/dev/null || true
    wait "$daemon_pid" 2>/dev/null || true
  fi
  if dpkg -s agentd >/dev/null 2>&1; then
    dpkg --purge agentd >/dev/null || rc=1
  fi
  [ -e /var/lib/agentd ] && { echo "ci-install: purge left /var/lib/agentd" >&2; rc=1; }
  [ -e /etc/agentd ] && { echo "ci-install: purge left /etc/agentd" >&2; rc=1; }
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT

# A previous run that died half-way leaves the package installed.
if dpkg -s agentd >/dev/null 2>&1; then
  say "purging a previously installed agentd"
  dpkg --purge agentd >/dev/null
fi

say "building the .deb"
deb=$(packaging/deb/build.sh | tail -n 1)
[ -f "$deb" ] || fail "build.sh did not produce a .deb (got: $deb)"
say "installing $deb"
dpkg -i "$deb"

# What the maintainer scripts and the package made.
expect() { # path owner:group mode
  local got
  got=$(stat -c '%U:%G %a' "$1") || fail "$1 is missing"
  [ "$got" = "$2 $3" ] || fail "$1 is $got, want $2 $3"
}
getent passwd agentd >/dev/null || fail "no agentd user"
getent group agentd >/dev/null || fail "no agentd group"
[ "$(getent passwd agentd | cut -d: -f7)" = /usr/sbin/nologin ] || fail "agentd has a login shell"
expect /etc/agentd root:agentd 750
expect /etc/agentd/config.toml root:agentd 640
expect /var/lib/agentd agentd:agentd 700
expect /usr/bin/agentd root:root 755
expect /usr/bin/agentd-mcp root:root 755
expect /lib/systemd/system/agentd.service root:root 644
grep -qx '/etc/agentd/config.toml' /var/lib/dpkg/info/agentd.conffiles || fail "config is not a conffile"
for f in /usr/share/bash-completion/completions/agentd \
  /usr/share/zsh/vendor-completions/_agentd \
  /usr/share/fish/vendor_completions.d/agentd.fish \
  /usr/share/man/man1/agentd.1.gz /usr/share/man/man1/agentd-doctor.1.gz; do
  [ -s "$f" ] || fail "$f is missing or empty"
done
if command -v groff >/dev/null; then
  rendered=$(zcat /usr/share/man/man1/agentd-doctor.1.gz | groff -man -Tutf8 2>/dev/null)
  grep -q 'agentd-doctor' <<<"$rendered" || fail "agentd-doctor.1 does not render"
fi
# As systemd-tmpfiles would at boot (postinst ran it when it exists).
if [ ! -d /run/agentd ]; then
  if command -v systemd-tmpfiles >/dev/null; then
    systemd-tmpfiles --create /usr/lib/tmpfiles.d/agentd.conf
  else
    install -d -o agentd -g agentd -m 0755 /run/agentd
  fi
fi
expect /run/agentd agentd:agentd 755
say "package layout ok"

if ! /usr/bin/agentd daemon --help | grep -q -- '--system'; then
  fail "this build has no \`agentd daemon --system\`: system mode is not merged, the installed daemon cannot start"
fi

for u in "$CLIENT" "$OTHER"; do
  getent passwd "$u" >/dev/null || useradd --system --user-group --no-create-home --shell /usr/sbin/nologin "$u"
done

# A test config, root-owned as the package ships it (the packaged one comes back at purge).
cat >/etc/agentd/config.toml <<EOF
[daemon]
mode = "system"
clients = ["$CLIENT"]
notify = false
EOF
chown root:agentd /etc/agentd/config.toml
chmod 0640 /etc/agentd/config.toml

say "starting /usr/bin/agentd daemon --system as agentd (no systemd)"
mkfifo "$tmp/ready"
setpriv --reuid agentd --regid agentd --init-groups --no-new-privs \
  env -i PATH=/usr/bin:/bin AGENTD_LOG=info /usr/bin/agentd daemon --system \
  >"$tmp/ready" 2>"$tmp/daemon.log" &
daemon_pid=$!
exec 3<"$tmp/ready"
if ! IFS= read -r -t 30 line <&3 || [[ "$line" != *'"ready":true'* ]]; then
  cat "$tmp/daemon.log" >&2
  fail "the daemon did not print its ready line"
fi
say "daemon ready: $line"
[ "$(stat -c %U "/proc/$daemon_pid")" = agentd ] || fail "daemon is not running as agentd"

# Smoke: a client is served, a non-client is refused with a reason, root is an admin.
out=$(runuser -u "$CLIENT" -- env -i PATH=/usr/bin:/bin /usr/bin/agentd --socket /run/agentd/agentd.sock status --json) \
  || fail "client $CLIENT was not served: $out"
grep -q '"daemon": "up"' <<<"$out" || fail "client status: $out"
if out=$(runuser -u "$OTHER" -- env -i PATH=/usr/bin:/bin /usr/bin/agentd --socket /run/agentd/agentd.sock status --json 2>&1); then
  fail "non-client $OTHER was served: $out"
fi
grep -q 'not a client' <<<"$out" || fail "non-client refusal does not say why: $out"
say "smoke ok: $CLIENT served, $OTHER refused"

# doctor as the client sees the system daemon.
out=$(runuser -u "$CLIENT" -- env -i PATH=/usr/bin:/bin /usr/bin/agentd doctor --json) || true
grep -q '"mode": "system"' <<<"$out" || fail "doctor as $CLIENT: $out"

kill -TERM "$daemon_pid"
wait "$daemon_pid" || fail "daemon exit status $?"
daemon_pid=""
exec 3<&-

if [ -f tests/tests/redteam.rs ]; then
  say "red team against the installed layout"
  # One test at a time: each starts the installed daemon on the one /run/agentd socket with
  # its own /etc/agentd/config.toml.
  AGENTD_REDTEAM_INSTALLED=1 cargo test -p agentd-tests --test redteam -- --test-threads=1
fi
say "ok"
