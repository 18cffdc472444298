"""Variants through the whole flow (real mlflow server, Prefect harness): a static int8 variant of a small trained
convnet is registered; a variant failing its gate leaves nothing behind (an accuracy refusal: test_convert_flow.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from onnx_stage.flows.convert_flow import convert_model
from onnx_stage.config import load_config

FAST = ["benchmark.timed_runs=10", "benchmark.warmup_runs=2", "benchmark.min_seconds=0",
        "benchmark.screening_runs=3", "benchmark.batch_sizes=[1]", "benchmark.tune_session=false"]

# a convnet trained on scikit-learn's bundled digits (8×8 pixels, 0-16): outputs that differ per input, so the
# variant gate is informative; 64 held-out images become the user's sample data (and the calibration rows)
TRAIN_CONVNET = """
import sys
import keras, numpy as np
from sklearn.datasets import load_digits
out = sys.argv[1]
digits = load_digits()
images, labels = digits.images[..., None].astype("float32"), digits.target
keras.utils.set_random_seed(0)
model = keras.Sequential([
    keras.Input((8, 8, 1), name="pixels"), keras.layers.Rescaling(1 / 16),
    keras.layers.Conv2D(16, 3, padding="same", activation="relu"), keras.layers.Conv2D(32, 3, activation="relu"),
    keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10, activation="softmax", name="digit"),
], name="digits_convnet")
model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
model.fit(images[:-64], labels[:-64], epochs=15, batch_size=64, verbose=0)
model.save(f"{out}/digits_convnet.keras")
np.savez(f"{out}/samples.npz", pixels=images[-64:])
"""


@pytest.fixture(scope="module")
def convnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("convnet")
    subprocess.run([sys.executable, "-c", TRAIN_CONVNET, str(out)], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"})
    return out


def test_static_int8_is_registered_and_variants_failing_a_gate_leave_nothing(
        stage: str, convnet: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = load_config(overrides=[
        *FAST, f"validation.sample_data={convnet / 'samples.npz'}",
        # int8_static's speed gate is off: a convnet this small is no faster in int8, and the gate's decision is
        # unit-tested; fp16 is given an unreachable one, to prove that a refused variant leaves nothing behind
        "variants=[{kind: int8_static, atol: 0.05, rtol: 0.1, min_argmax_agreement: 0.9, min_speedup: null},"
        " {kind: fp16, atol: 1.0e-2, rtol: 1.0e-2, min_speedup: 1000}]"])
    twin = convert_model(model_name="digits-convnet", path=str(convnet / "digits_convnet.keras"), config=config)

    client = MlflowClient()
    versions = client.search_model_versions(f"name='{twin.name}'")
    by_variant = {v.tags["onnx_stage.variant"]: v for v in versions}
    assert set(by_variant) == {"fp32", "int8_static"}  # nothing of fp16
    summary = caplog.text  # the flow prints its summary through Prefect's logger
    assert "fp16: refused, not registered — not faster than the fp32 model at batch 1: fp32 p50 / fp16 p50 =" in summary

    int8 = mlflow.onnx.load_model(f"models:/{twin.name}/{by_variant['int8_static'].version}")
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in int8.graph.node}
    samples = np.load(convnet / "samples.npz")["pixels"]
    argmaxes = []
    for uri in (twin.uri, f"models:/{twin.name}/{by_variant['int8_static'].version}"):
        argmaxes.append(mlflow.pyfunc.load_model(uri).predict(samples).argmax(1))
    assert np.mean(argmaxes[0] == argmaxes[1]) >= 0.9
