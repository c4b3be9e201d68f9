"""Runs the same psycopg 3 workload against one DSN and prints its results as JSON.

The wire-fidelity test runs it once directly against PostgreSQL and once through agentd
and compares the two outputs. Usage: python3 psycopg_check.py DSN
"""
import json
import sys

import psycopg


def main(dsn: str) -> None:
    out = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute("SELECT 1 AS one, 'two'::text AS two, 3.5::float8 AS three")
        out["simple"] = [list(cur.fetchone()), [d.name for d in cur.description]]
        # Extended protocol with parameters, text and binary results.
        cur.execute("SELECT %s::int + %s::int, %s::text", (40, 2, "ünïcode"))
        out["params"] = list(cur.fetchone())
        bcur = conn.cursor(binary=True)
        bcur.execute("SELECT %s::bigint * 2, %s::bytea", (21, b"\x00\x01\xff"))
        row = bcur.fetchone()
        out["binary"] = [row[0], row[1].hex()]
        # Server-side prepared statements (prepare_threshold=0 prepares at once).
        for i in range(3):
            cur.execute("SELECT %s::int * 10", (i,), prepare=True)
            out.setdefault("prepared", []).append(cur.fetchone()[0])
        cur.execute("CREATE TEMP TABLE t (id int, body text)")
        cur.executemany("INSERT INTO t VALUES (%s, %s)", [(i, f"row {i}") for i in range(100)])
        # COPY in and out.
        with cur.copy("COPY t (id, body) FROM STDIN") as copy:
            for i in range(100, 1100):
                copy.write_row((i, "x" * (i % 50)))
        cur.execute("SELECT count(*), sum(length(body)) FROM t")
        out["after_copy_in"] = list(cur.fetchone())
        chunks = []
        with cur.copy("COPY (SELECT id, body FROM t ORDER BY id) TO STDOUT") as copy:
            for data in copy:
                chunks.append(bytes(data))
        out["copy_out_bytes"] = sum(len(c) for c in chunks)
        # Errors keep every field.
        try:
            cur.execute("SELECT 1/0")
        except psycopg.Error as e:
            d = e.diag
            out["error"] = [d.sqlstate, d.message_primary, d.severity, d.context]
        # Pipeline mode.
        with conn.pipeline():
            c1 = conn.execute("SELECT 1")
            c2 = conn.execute("SELECT 2")
        out["pipeline"] = [c1.fetchone()[0], c2.fetchone()[0]]
        # LISTEN/NOTIFY on one connection.
        conn.execute("LISTEN agentd_chan")
        conn.execute("NOTIFY agentd_chan, 'hello'")
        notes = [n.payload for n in conn.notifies(timeout=5, stop_after=1)]
        out["notify"] = notes
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1])
