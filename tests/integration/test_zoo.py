"""Every layer family of the zoo (and two small keras.applications models) converts and passes parity,
through the real load → convert → validate code and one Keras child process, without MLflow or Prefect."""
from __future__ import annotations

from pathlib import Path

import pytest

from onnx_stage.config import ConvertConfig, ValidateConfig
from onnx_stage.errors import StageError
from onnx_stage.keras_worker import KerasWorker
from model_zoo.zoo import CUSTOM_LAYERS_MODULE, ZOO, save_models_in_child
from onnx_stage.tasks.convert import convert_source
from onnx_stage.tasks.load import load_source
from onnx_stage.records import ModelRef
from onnx_stage.tasks.validate import check_parity

CI_MODELS = [name for name, model in ZOO.items() if model.in_ci]


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("zoo")
    save_models_in_child(out, CI_MODELS)
    return out


@pytest.mark.parametrize("name", CI_MODELS)
def test_zoo_model_converts_with_parity(name: str, zoo_dir: Path, worker: KerasWorker, tmp_path: Path) -> None:
    modules = [CUSTOM_LAYERS_MODULE] if ZOO[name].custom_objects else []
    source = load_source(ModelRef(name=name, path=str(zoo_dir / f"{name}.keras")), worker, tmp_path, modules)
    converted = convert_source(source, worker, ConvertConfig(), tmp_path / "onnx")
    report = check_parity(source, converted, worker, ValidateConfig(), tmp_path)
    assert report.passed
    assert {case.batch_size for case in report.cases} == {1, 16}
    assert source.weights_bytes and 0 < converted.conversion_peak_rss_bytes < 4 * 1024**3


def test_an_unregistered_custom_layer_is_named_with_the_fix(zoo_dir: Path, worker: KerasWorker,
                                                            tmp_path: Path) -> None:
    with KerasWorker(timeout_seconds=300) as fresh:  # the shared child may have imported the layer's module
        with pytest.raises(StageError, match=r"class 'ScaledSwish' \(defined in module 'model_zoo.custom_layers'\) "
                                              r"is not registered.*list its module in convert.custom_object_modules"):
            load_source(ModelRef(name="custom", path=str(zoo_dir / "custom_layer.keras")), fresh, tmp_path)
