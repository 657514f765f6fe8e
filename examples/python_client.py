"""Write line protocol to Gannet over HTTP and query it back over the Postgres wire protocol.

Start a server first (`cargo run --release -- serve`), then:

    python3 -m pip install "psycopg[binary]"
    python3 examples/python_client.py

GANNET_HTTP (default http://127.0.0.1:8181) and GANNET_PG (default 127.0.0.1:5433) say
where the server listens.
"""

import os
import random
import time
import urllib.request

import psycopg

HTTP = os.environ.get("GANNET_HTTP", "http://127.0.0.1:8181")
PG_HOST, PG_PORT = os.environ.get("GANNET_PG", "127.0.0.1:5433").rsplit(":", 1)
DB = "example"


def write_lines(lines):
    """POST line protocol; Gannet answers 204 once the lines are durable."""
    request = urllib.request.Request(
        f"{HTTP}/api/v3/write_lp?db={DB}&precision=second",
        data="\n".join(lines).encode(),
        method="POST",
    )
    with urllib.request.urlopen(request) as response:
        assert response.status == 204, response.status


def main():
    now = int(time.time())
    rng = random.Random(42)
    lines = [
        f"sensor,room={room} temp={20 + rng.random() * 5:.3f},humidity={40 + rng.random() * 10:.3f} {now - age}"
        for room in ("kitchen", "hall", "attic")
        for age in range(0, 600, 10)
    ]
    write_lines(lines)
    print(f"wrote {len(lines)} points")

    with psycopg.connect(host=PG_HOST, port=PG_PORT, dbname=DB, user="example") as conn:
        rows = conn.execute(
            """
            SELECT room, count(*) AS points, round(avg(temp), 2) AS avg_temp, max(time) AS latest
            FROM sensor
            WHERE time > now() - INTERVAL '1 hour' AND humidity > %s
            GROUP BY room
            ORDER BY room
            """,
            (0.0,),
        ).fetchall()
    for room, points, avg_temp, latest in rows:
        print(f"{room:8} {points:3} points  avg {avg_temp:5.2f} C  latest {latest}")


if __name__ == "__main__":
    main()
