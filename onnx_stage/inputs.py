"""The inputs validation feeds both models: the version's example, the user's samples, generated batches."""
from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np

from onnx_stage.config import ValidateConfig
from onnx_stage.errors import StageError
from onnx_stage.keras_worker import KerasWorker
from onnx_stage.parity import generated_inputs, has_dynamic_inner_dimension
from tasks.records import SourceModel


def validation_inputs(source: SourceModel, worker: KerasWorker,
                      config: ValidateConfig) -> list[tuple[str, list[np.ndarray]]]:
    """The version's input example, the user's sample data, then generated batches (batch 1 and N prove the
    dynamic batch dimension; other sequence lengths prove dynamic inner dimensions where the model has them)."""
    example = _read_npz(source.input_example, source) if source.input_example else None
    cases = [("input example", example)] if example else []
    if config.sample_data:
        cases.append(("sample data", read_sample_data(config.sample_data, source, config.sample_rows)))
    rng, hints = np.random.default_rng(config.seed), worker.call("input_hints")
    cases += [(f"generated batch {b}", generated_inputs(source.inputs, b, rng, example, hints))
              for b in config.batch_sizes]
    if has_dynamic_inner_dimension(source.inputs):
        batch = max(config.batch_sizes)
        cases += [(f"generated batch {batch}, length {n}", generated_inputs(source.inputs, batch, rng, example, hints, n))
                  for n in config.sequence_lengths]
    return cases


def read_sample_data(uri: str, source: SourceModel, max_rows: int) -> list[np.ndarray]:
    """A .npz of arrays named after the model's inputs (or one unnamed array for a one-input model)."""
    path = Path(uri) if Path(uri).is_file() else None
    if path is None:
        try:
            path = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
        except Exception as error:
            raise StageError(f"validation.sample_data {uri!r} cannot be read: {str(error).splitlines()[0]}") from None
    names = [spec.name for spec in source.inputs]
    with np.load(path) as arrays:
        if set(names) <= set(arrays.files):
            chosen = [arrays[name] for name in names]
        elif len(names) == 1 and len(arrays.files) == 1:
            chosen = [arrays[arrays.files[0]]]
        else:
            raise StageError(f"validation.sample_data {uri!r} holds arrays {arrays.files}; "
                             f"save them under the model's input names {names}")
    return [a[:max_rows].astype(spec.dtype) for a, spec in zip(chosen, source.inputs)]


def _read_npz(path: Path, source: SourceModel) -> list[np.ndarray]:
    with np.load(path) as arrays:
        return [arrays[spec.name] for spec in source.inputs]
