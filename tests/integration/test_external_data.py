"""A model over protobuf's 2 GB limit goes through the whole stage with ONNX external data."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient

from onnx_stage.flows.convert_flow import convert_model
from onnx_stage.config import load_config

BUILD = '''
import keras, sys
features = keras.Input((16384,), name="features")
hidden = keras.layers.Dense(24576, name="wide")(features)  # 16384 x 24576 float32: 1.5 GiB
hidden = keras.layers.Dense(8192, name="narrow")(hidden)  # 0.75 GiB: 2.25 GiB in all, each kernel under 2 GiB
keras.Model(features, keras.layers.Dense(10, activation="softmax", name="label")(hidden)).save(sys.argv[1])
'''
GIB = 2**30


def test_model_over_2gb_is_converted_validated_registered_and_loaded(stage: str, tmp_path: Path) -> None:
    h5 = tmp_path / "huge.h5"
    subprocess.run([sys.executable, "-c", BUILD, str(h5)], check=True)
    config = load_config(overrides=["benchmark.enabled=false"])

    # returns only once the registered version, loaded through mlflow.pyfunc, matched Keras (check-consumer-load)
    twin = convert_model(model_name="huge-dense", path=str(h5), config=config)

    sizes = {f.path.rsplit("/", 1)[-1]: f.file_size for f in MlflowClient().list_artifacts(twin.run_id, "model")}
    assert sizes["model.onnx"] < 16 * 2**20, "the graph file holds no weights"
    assert max(size or 0 for name, size in sizes.items() if name != "model.onnx") > 2 * GIB, sizes  # the weights
    tags = MlflowClient().get_model_version(twin.name, twin.version).tags
    assert float(tags["onnx_stage.parity_max_abs"]) < 1e-4
