"""Validation feeds plausible inputs: token ids inside the vocabulary, varying sequence lengths, user samples."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from onnx_stage.config import ConvertConfig, ValidateConfig
from onnx_stage.errors import StageError
from onnx_stage.keras_worker import KerasWorker
from onnx_stage.tasks.convert import convert_source
from onnx_stage.tasks.load import load_source
from onnx_stage.records import ModelRef
from onnx_stage.tasks.validate import check_parity

BUILD = '''
import keras, sys
tokens = keras.Input((None,), dtype="int32", name="tokens")
x = keras.layers.Embedding(7, 4, mask_zero=True, name="embed")(tokens)
x = keras.layers.GRU(3, name="gru")(x)
keras.Model(tokens, keras.layers.Dense(2, activation="softmax", name="label")(x)).save(sys.argv[1] + "/text.keras")
'''


@pytest.fixture(scope="module")
def text_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("text")
    subprocess.run([sys.executable, "-c", BUILD, str(out)], check=True)
    return out / "text.keras"


def test_vocabulary_lengths_and_sample_data(text_model: Path, tmp_path: Path) -> None:
    samples = tmp_path / "samples.npz"
    np.savez(samples, tokens=np.array([[1, 2, 3, 0, 0], [6, 5, 4, 3, 2]], dtype="int32"))
    config = ValidateConfig(sample_data=str(samples), batch_sizes=[1, 4], sequence_lengths=[2, 11])
    with KerasWorker(timeout_seconds=300) as worker:
        source = load_source(ModelRef(name="text", path=str(text_model)), worker, tmp_path)
        converted = convert_source(source, worker, ConvertConfig(), tmp_path / "onnx")
        report = check_parity(source, converted, worker, config, tmp_path)
        assert worker.call("input_hints") == [{"low": 0, "high": 6, "reason": "embed: vocabulary of 7"}]

    assert [c.label for c in report.cases] == ["sample data", "generated batch 1", "generated batch 4",
                                               "generated batch 4, length 2", "generated batch 4, length 11"]
    assert report.passed and report.cases[0].batch_size == 2

    np.savez(samples, wrong_name=np.zeros((1, 3), dtype="int32"), other=np.zeros((1, 3)))
    with KerasWorker(timeout_seconds=300) as worker, pytest.raises(StageError, match="input names \\['tokens'\\]"):
        check_parity(source, converted, worker, config, tmp_path)
