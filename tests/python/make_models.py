"""Trains the scikit-learn models the ONNX tests score, exports them with skl2onnx, and
writes what the tests compare against.

Usage: make_models.py OUT_DIR

Writes into OUT_DIR:
  iforest.onnx      IsolationForest(n_estimators=100, random_state=42) on 3 features;
                    outputs `label` (predict) and `scores` (decision_function)
  gbr.onnx          GradientBoostingRegressor on 3 features; output `variable`
  clf.onnx          RandomForestClassifier (3 classes) without ZipMap; outputs `label`
                    (predict) and `probabilities` (predict_proba)
  fraud.onnx        GradientBoostingClassifier (30 trees of depth 3) telling the far-off
                    rows from the rest; outputs `label` (1 = far off) and `probabilities`
  wide.onnx         LinearRegression over 8 features: one [N, 8] input
  zipmap.onnx       LogisticRegression with skl2onnx's default ZipMap output
  multi.onnx        two inputs, a: float32[N,1] and b: int64[N,2]; y = a + 10 b0 + 100 b1
  rows.lp           the feature rows as line protocol: table `events`, one row per second
  expected.csv      per row: id, x1, x2, x3, and each model's scikit-learn answer
"""

import csv
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    IsolationForest,
    RandomForestClassifier,
)
from sklearn.linear_model import LinearRegression, LogisticRegression

OPSET = {"": 17, "ai.onnx.ml": 3}
ROWS = 2000

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(42)

# Three features, mostly normal with a few far-off anomalies. float32, as ONNX models take
# them: written to Gannet as doubles, they cast back to exactly these values.
X = rng.normal(0.0, 1.0, size=(ROWS, 3)).astype(np.float32)
X[::97] += rng.normal(6.0, 1.0, size=X[::97].shape).astype(np.float32)
y_reg = (2.0 * X[:, 0] - X[:, 1] ** 2 + 0.5 * X[:, 2] + rng.normal(0, 0.1, ROWS)).astype(
    np.float32
)
y_clf = np.digitize(X[:, 0] + X[:, 1], [-0.5, 0.5])  # classes 0, 1, 2


def save(name, model, features=3, **options):
    onx = to_onnx(
        model,
        X[:1, :features] if features == 3 else np.zeros((1, features), np.float32),
        target_opset=OPSET,
        **options,
    )
    with open(os.path.join(out, f"{name}.onnx"), "wb") as f:
        f.write(onx.SerializeToString())


iforest = IsolationForest(n_estimators=100, random_state=42).fit(X)
save("iforest", iforest)

gbr = GradientBoostingRegressor(n_estimators=50, max_depth=3, random_state=42).fit(X, y_reg)
save("gbr", gbr)

clf = RandomForestClassifier(n_estimators=20, max_depth=6, random_state=42).fit(X, y_clf)
save("clf", clf, options={"zipmap": False})

# A fraud-style classifier: cheap to run (one tree ensemble), as scoring rules that must
# keep up with a fast stream use.
far_off = np.zeros(ROWS, dtype=np.int64)
far_off[::97] = 1
fraud = GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=42).fit(X, far_off)
save("fraud", fraud, options={"zipmap": False})

X8 = rng.normal(size=(200, 8)).astype(np.float32)
wide = LinearRegression().fit(X8, X8 @ np.arange(1, 9, dtype=np.float32))
save("wide", wide, features=8)

zipmap = LogisticRegression().fit(X, y_clf)
save("zipmap", zipmap)

# A hand-made graph with two inputs, one of them integers.
graph = helper.make_graph(
    [
        helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["bf", "w"], ["bw"]),
        helper.make_node("Add", ["a", "bw"], ["y"]),
    ],
    "multi",
    [
        helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 1]),
        helper.make_tensor_value_info("b", TensorProto.INT64, ["N", 2]),
    ],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
    [helper.make_tensor("w", TensorProto.FLOAT, [2, 1], [10.0, 100.0])],
)
multi = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
multi.ir_version = 8
onnx.checker.check_model(multi)
onnx.save(multi, os.path.join(out, "multi.onnx"))

with open(os.path.join(out, "rows.lp"), "w") as f:
    for i, (a, b, c) in enumerate(X):
        # repr of the float32 as a double: the exact value, parsed back exactly.
        f.write(f"events,src=test id={i}i,x1={float(a)!r},x2={float(b)!r},x3={float(c)!r} {i}\n")

labels = iforest.predict(X)
scores = iforest.decision_function(X)
regression = gbr.predict(X)
clf_labels = clf.predict(X)
fraud_labels = fraud.predict(X)
proba = clf.predict_proba(X)
with open(os.path.join(out, "expected.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(
        ["id", "x1", "x2", "x3", "iforest_label", "iforest_score", "gbr", "clf_label"]
        + [f"clf_p{k}" for k in range(proba.shape[1])]
        + ["fraud_label"]
    )
    for i in range(ROWS):
        w.writerow(
            [i, repr(float(X[i, 0])), repr(float(X[i, 1])), repr(float(X[i, 2]))]
            + [int(labels[i]), repr(float(scores[i])), repr(float(regression[i]))]
            + [int(clf_labels[i])]
            + [repr(float(p)) for p in proba[i]]
            + [int(fraud_labels[i])]
        )
