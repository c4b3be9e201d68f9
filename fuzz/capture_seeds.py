#!/usr/bin/env python3
"""Captures fuzz seeds from real traffic (used once to make fuzz/seeds/; re-run to refresh).

Usage: python3 fuzz/capture_seeds.py DEMO_JSON
where DEMO_JSON is the line `agentd demo --serve` prints. A recording forwarder sits between
real psql/pgbench and the grant listener (plaintext loopback), and between the real agentd
CLI and the control socket; the client->daemon bytes become seeds:
  startup_packet/    everything a client sends up to and including its SCRAM final message
  frontend_messages/ 8 chunk-size bytes + a text-cap byte + what it sends after login
  control_frame/     the CLI's framed requests
"""
import json, os, socket, subprocess, sys, threading, urllib.parse

demo = json.loads(sys.argv[1])
here = os.path.dirname(os.path.abspath(__file__))
seeds = os.path.join(here, "seeds")
dsn = urllib.parse.urlparse(demo["dsn"])
AGENTD = os.environ.get("AGENTD_BIN", "agentd")

def forward(client, server, record):
    def pump(src, dst, rec):
        try:
            while True:
                b = src.recv(65536)
                if not b:
                    break
                if rec is not None:
                    rec.append(b)
                dst.sendall(b)
        except OSError:
            pass
        finally:
            try: dst.shutdown(socket.SHUT_WR)
            except OSError: pass
    t1 = threading.Thread(target=pump, args=(client, server, record)); t1.start()
    t2 = threading.Thread(target=pump, args=(server, client, None)); t2.start()
    t1.join(); t2.join()

def serve(listener, connect, captures):
    while True:
        try:
            c, _ = listener.accept()
        except OSError:
            return
        rec = []
        captures.append(rec)
        threading.Thread(target=forward, args=(c, connect(), rec), daemon=True).start()

def split_pg(data):
    """(startup part, post-login part) of a client byte stream."""
    i = 0
    while True:
        n = int.from_bytes(data[i:i+4], "big"); code = int.from_bytes(data[i+4:i+8], "big")
        i += n
        if code not in (80877103, 80877104):
            break
    for _ in range(2):  # SASLInitialResponse, SASLResponse
        i += 1 + int.from_bytes(data[i+1:i+5], "big")
    return data[:i], data[i:]

def run_pg(cmds):
    lst = socket.socket(); lst.bind(("127.0.0.1", 0)); lst.listen(64)
    port = lst.getsockname()[1]
    caps = []
    threading.Thread(target=serve, args=(lst, lambda: socket.create_connection((dsn.hostname, dsn.port)), caps), daemon=True).start()
    env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(port), PGUSER=dsn.username,
               PGPASSWORD=dsn.password, PGDATABASE=dsn.path.lstrip("/"), PGSSLMODE="prefer")
    for name, cmd in cmds:
        before = len(caps)
        subprocess.run(cmd, env=env, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, input=b"")
        data = b"".join(b"".join(r) for r in caps[before:before+1])
        if not data:
            continue
        start, rest = split_pg(data)
        open(os.path.join(seeds, "startup_packet", name), "wb").write(start)
        if rest:
            cut = bytes([7, 1, 13, 5, 64, 3, 200, 2])
            open(os.path.join(seeds, "frontend_messages", name), "wb").write(bytes([32]) + cut + rest[:60000])
    lst.close()

run_pg([
    ("psql_simple", ["psql", "-X", "-c", "SELECT count(*) FROM orders", "-c", "SELECT 'x' AS \"y\";"]),
    ("psql_extended", ["psql", "-X", "-c", "SELECT $1::int \\bind 42 \\g"]),
    ("psql_copy", ["psql", "-X", "-c", "COPY (SELECT 1) TO STDOUT", "-c", "CREATE TEMP TABLE t(n int)", "-c", "\\copy t FROM PROGRAM 'seq 1 50'"]),
    ("pgbench_extended", ["pgbench", "-n", "-t", "5", "-M", "extended", "-f", "/dev/stdin"]),
    ("pgbench_prepared", ["pgbench", "-n", "-t", "5", "-M", "prepared", "-f", os.path.join(here, "seeds", "bench.sql")]),
])

# Control frames from the real CLI.
sock_dir = os.path.dirname(demo["socket"])
proxy_path = os.path.join(sock_dir, "capture.sock")
lst = socket.socket(socket.AF_UNIX); lst.bind(proxy_path); os.chmod(proxy_path, 0o600); lst.listen(8)
caps = []
def unix_connect():
    s = socket.socket(socket.AF_UNIX); s.connect(demo["socket"]); return s
threading.Thread(target=serve, args=(lst, unix_connect, caps), daemon=True).start()
for name, args in [("status", ["status", "--json"]), ("requests", ["requests", "--all", "--json"]),
                   ("request", ["request", "demo", "--permission", "read_only", "--ttl", "2m", "--json"]),
                   ("revoke_all", ["revoke", "--all", "--json"])]:
    before = len(caps)
    subprocess.run([AGENTD, "--config", demo["config"], "--socket", proxy_path] + args,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    data = b"".join(b"".join(r) for r in caps[before:])
    if data:
        open(os.path.join(seeds, "control_frame", name), "wb").write(data)
lst.close(); os.unlink(proxy_path)
print("seeds written under", seeds)
