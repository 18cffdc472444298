"""Models users really bring (issue 13; model_zoo/user_models.py): each converts and passes parity, or is refused before
conversion with one line naming the Keras layer, why, and what to do. Through the real load → convert → validate
code and one Keras child process, without MLflow or Prefect."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from onnx_stage.config import ConvertConfig, ValidateConfig
from onnx_stage.errors import StageError
from onnx_stage.keras_worker import KerasWorker, WorkerError
from model_zoo.zoo import save_models_in_child
from model_zoo.user_models import USER_MODELS
from onnx_stage.tasks.convert import convert_source
from onnx_stage.tasks.load import load_source
from onnx_stage.records import ModelRef
from onnx_stage.tasks.validate import check_parity

CI_MODELS = [name for name, model in USER_MODELS.items() if model.in_ci]
CONVERTS = [name for name in CI_MODELS if USER_MODELS[name].expected == "converts"]
REFUSED = [name for name in CI_MODELS if USER_MODELS[name].expected.startswith("refused")]

# MobileNetV3 with input (None, None, 3): images of 32×32 (its smallest size) and 64×64, never 3×3 (a sequence length)
# What each refusal tells the user to do
REFUSAL_ADVICE = {"LSTM": "build the same model with stateful=False", "Resizing": "--set convert.opset=18",
                  "UpSampling2D": "use ", "TextVectorization": "split"}
# A step model that returns its LSTM/GRU states and takes them back: a second call on the states of the first.
CASES = {"MobileNetV3Small_dynamic": ["generated batch 1", "generated batch 16", "generated batch 1, image 64×64"],
         "multi_state_rnn": ["generated batch 1", "generated batch 16",
                             "generated batch 16, call 2 (the states call 1 returned)"],
         # length 3 is shorter than the Conv1D's kernel: Keras rejects it, so it is no case (and no failure)
         "conv1d_dynamic_length": ["generated batch 1", "generated batch 16", "generated batch 16, length 17"]}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("user-models")
    save_models_in_child(out, CI_MODELS)
    return out


@pytest.mark.parametrize("name", CONVERTS)
def test_user_model_converts_with_parity(name: str, models_dir: Path, worker: KerasWorker, tmp_path: Path) -> None:
    source = load_source(ModelRef(name=name, path=str(models_dir / f"{name}.keras")), worker, tmp_path)
    converted = convert_source(source, worker, ConvertConfig(opset=USER_MODELS[name].opset), tmp_path / "onnx")
    report = check_parity(source, converted, worker, ValidateConfig(), tmp_path)
    assert report.passed
    assert {case.batch_size for case in report.cases} >= {1, 16}
    if name in CASES:
        assert [case.label for case in report.cases] == CASES[name]



@pytest.mark.parametrize("name", REFUSED)
def test_user_model_is_refused_before_conversion_naming_the_layer(name: str, models_dir: Path, worker: KerasWorker,
                                                                   tmp_path: Path) -> None:
    """One line naming the layer class, why, and what to do; nothing converted. A model taking strings may already be
    refused when it loads (its string input), else the layer is refused before any route runs."""
    layer = USER_MODELS[name].expected.removeprefix("refused: ")
    with pytest.raises((StageError, WorkerError)) as refusal:
        source = load_source(ModelRef(name=name, path=str(models_dir / f"{name}.keras")), worker, tmp_path)
        convert_source(source, worker, ConvertConfig(opset=USER_MODELS[name].opset), tmp_path / "onnx")
    message = str(refusal.value)
    assert layer in message and REFUSAL_ADVICE[layer] in message and "\n" not in message
    assert "takes strings" in message or re.search(rf"refused before conversion: {layer} layer '\w+' ", message)
    assert not (tmp_path / "onnx" / "model.onnx").exists()


CRASHING_ROUTE = '''
import os

def convert(model, opset):
    os.abort()  # as a converter's failed C++ check does: SIGABRT on the converting thread

def versions():
    return {}
'''


def test_a_route_that_crashes_costs_that_route_not_the_conversion(models_dir: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "crashing_route.py").write_text(CRASHING_ROUTE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the child imports the route by its module path
    config = ConvertConfig.model_construct(routes=["crashing_route", "tf2onnx_lean"], opset=17,
                                           json_max_tensor_elements=1024)
    with KerasWorker(timeout_seconds=300) as fresh:
        source = load_source(ModelRef(name="lookup", path=str(models_dir / "integer_lookup.keras")), fresh, tmp_path)
        converted = convert_source(source, fresh, config, tmp_path / "onnx")
        report = check_parity(source, converted, fresh, ValidateConfig(), tmp_path)
    assert converted.route == "tf2onnx_lean" and report.passed
    assert converted.route_failures == {"crashing_route": "route crashing_route crashed (signal 6, SIGABRT)"}
    assert not (tmp_path / "onnx" / "model.onnx.route").exists()
