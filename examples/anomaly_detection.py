"""Anomaly detection where the data lives: train a model, hand it to Gannet, score in SQL,
and get alerts as the data arrives.

    scripts/setup                                  # scikit-learn, skl2onnx, psycopg into .venv
    scripts/install-onnxruntime && cargo run --release -- serve &
    .venv/bin/python examples/anomaly_detection.py

GANNET_HTTP (default http://127.0.0.1:8181) and GANNET_PG (127.0.0.1:5433) say where the
server is.
"""

import json
import os
import urllib.request

import numpy as np
import psycopg
from skl2onnx import to_onnx
from sklearn.ensemble import IsolationForest

HTTP = os.environ.get("GANNET_HTTP", "http://127.0.0.1:8181").rstrip("/")
PG_HOST, PG_PORT = os.environ.get("GANNET_PG", "127.0.0.1:5433").rsplit(":", 1)
DB = "ops"


def http(method, path, body=b""):
    request = urllib.request.Request(HTTP + path, data=body, method=method)
    with urllib.request.urlopen(request) as response:
        return response.status, response.read()


# 1. Train on normal CPU behaviour: user, system and iowait percentages.
rng = np.random.default_rng(0)
normal = np.column_stack(
    [rng.normal(30, 5, 5000), rng.normal(10, 2, 5000), rng.normal(2, 0.5, 5000)]
).astype(np.float32)
forest = IsolationForest(n_estimators=100, contamination=0.01, random_state=42).fit(normal)
onnx = to_onnx(forest, normal[:1], target_opset={"": 17, "ai.onnx.ml": 3})

# 2. Hand the model to Gannet: it is checked, stored in the models directory, and callable.
status, body = http("PUT", "/api/v1/models/cpu_iforest", onnx.SerializeToString())
print("uploaded", json.loads(body)["name"], "->", status)

# 3. Write an hour of metrics for three hosts, one point a minute.
lines = []
for minute in range(60):
    for host in ("web-1", "web-2", "db-1"):
        user, system, iowait = rng.normal(30, 5), rng.normal(10, 2), rng.normal(2, 0.5)
        lines.append(
            f"cpu,host={host} usage_user={user:.2f},usage_system={system:.2f},"
            f"usage_iowait={iowait:.2f} {1_700_000_000 + minute * 60}"
        )
http("POST", f"/api/v3/write_lp?db={DB}&precision=s", "\n".join(lines).encode())
print("wrote", len(lines), "points")

with psycopg.connect(host=PG_HOST, port=PG_PORT, dbname=DB, autocommit=True) as conn:
    # 4. Score in SQL: the model runs on whole batches of rows, inside the query.
    flagged = conn.execute(
        "SELECT count(*) FROM cpu "
        "WHERE onnx_predict('cpu_iforest', usage_user, usage_system, usage_iowait) = -1"
    ).fetchone()[0]
    print("anomalies in the past hour:", flagged)

    # 5. Score every new point as it lands, and hear about anomalies at once.
    conn.execute(
        "CREATE SCORING RULE IF NOT EXISTS cpu_odd ON cpu "
        "USING onnx_predict('cpu_iforest', usage_user, usage_system, usage_iowait) "
        "WHERE score = -1"
    )
    conn.execute("LISTEN gannet_alerts")
    spike = f"cpu,host=db-1 usage_user=97.5,usage_system=45.0,usage_iowait=30.0 {1_700_003_600}"
    http("POST", f"/api/v3/write_lp?db={DB}&precision=s", spike.encode())
    for notification in conn.notifies(timeout=30, stop_after=1):
        alert = json.loads(notification.payload)
        print("alert:", alert["rule"], alert["tags"]["host"], alert["time"], "score", alert["score"])

    # Alerts are rows too: chart them in Grafana, query them with psql.
    rows = conn.execute('SELECT host, rule, score FROM alerts ORDER BY time').fetchall()
    print("alerts table:", rows)
