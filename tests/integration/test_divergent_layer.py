"""Parity failures name the Keras layer where ONNX starts to diverge (one weight deliberately perturbed)."""
from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper

from onnx_stage.config import ConvertConfig, ValidateConfig
from onnx_stage.errors import StageError
from onnx_stage.keras_worker import KerasWorker
from onnx_stage.tasks.convert import convert_source
from onnx_stage.tasks.load import load_source
from onnx_stage.records import ModelRef
from onnx_stage.tasks.validate import check_parity

BUILD_MODELS = '''
import keras, sys
out = sys.argv[1]
mlp = keras.Sequential([keras.Input((12,), name="features"), keras.layers.Dense(16, activation="relu", name="hidden"),
                        keras.layers.Dense(8, activation="relu", name="bottleneck"),
                        keras.layers.Dense(4, activation="softmax", name="head")])
mlp.save(f"{out}/mlp.keras")
image = keras.Input((16, 16, 3), name="image")
x = keras.layers.Conv2D(8, 3, padding="same", name="stem")(image)
x = keras.layers.BatchNormalization(name="stem_bn")(x)
x = keras.layers.ReLU(name="stem_relu")(x)
branch = keras.layers.Conv2D(8, 1, name="branch_conv")(x)
x = keras.layers.Add(name="merge")([x, branch])
x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
keras.Model(image, keras.layers.Dense(5, name="logits")(x), name="tiny_convnet").save(f"{out}/convnet.keras")
'''


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("models")
    subprocess.run([sys.executable, "-c", BUILD_MODELS, str(out)], check=True)
    return out


def perturb_weight_feeding(onnx_path: Path, node_name_part: str) -> None:
    model = onnx.load(str(onnx_path))
    node = next(n for n in model.graph.node if node_name_part in n.name and n.op_type in {"MatMul", "Conv", "Gemm"})
    weights = {t.name: t for t in model.graph.initializer}
    tensor = weights[next(i for i in node.input if i in weights)]
    values = numpy_helper.to_array(tensor).copy()
    values.flat[0] += 5.0
    tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    onnx.save(model, str(onnx_path))


@pytest.mark.parametrize(("file", "perturbed", "blamed"), [
    ("mlp.keras", "bottleneck", "'bottleneck' (Dense); the last agreeing layer upstream is 'hidden'"),
    ("convnet.keras", "branch_conv", "'branch_conv' (Conv2D); the last agreeing layer upstream is 'stem_relu'"),
])
def test_the_perturbed_layer_is_named(model_files: Path, tmp_path: Path, file: str, perturbed: str,
                                      blamed: str) -> None:
    with KerasWorker(timeout_seconds=300) as worker:
        source = load_source(ModelRef(name="zoo", path=str(model_files / file)), worker, tmp_path)
        converted = convert_source(source, worker, ConvertConfig(), tmp_path / "onnx")
        check_parity(source, converted, worker, ValidateConfig(), tmp_path)  # unperturbed: passes
        perturb_weight_feeding(converted.onnx_path, perturbed)
        with pytest.raises(StageError, match="first diverging Keras layer: " + blamed.replace("(", r"\(").replace(")", r"\)")):
            check_parity(source, converted, worker, ValidateConfig(), tmp_path)
