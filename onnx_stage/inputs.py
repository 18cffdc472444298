"""The inputs validation feeds both models: the version's example, the user's samples, generated batches."""
from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import numpy as np

from onnx_stage.config import ValidateConfig
from onnx_stage.errors import StageError
from onnx_stage.keras_worker import KerasWorker, WorkerError
from onnx_stage.parity import generated_inputs, has_dynamic_inner_dimension
from onnx_stage.records import SourceModel, TensorSpec

# Image sizes tried, smallest first, for a dynamic height/width when the input example gives none: 32 is the
# smallest keras.applications accept (imagenet_utils.obtain_input_shape's min_size), the rest are their default
# sizes (224; 299 Inception/Xception; 331 NASNetLarge) and the multiples of 32 a U-Net's skips need.
IMAGE_SIZES = (32, 64, 96, 128, 160, 192, 224, 256, 299, 320, 331, 384, 512)
# Lengths tried for dynamic sequence dimensions of generated batches when there is no input example.
SEQUENCE_LENGTHS = (8, 16, 32, 64, 128, 256)


def validation_inputs(source: SourceModel, worker: KerasWorker,
                      config: ValidateConfig) -> list[tuple[str, list[np.ndarray]]]:
    """The version's input example, the user's sample data, then generated batches (batch 1 and N prove the
    dynamic batch dimension; other sequence lengths, and a second image size, prove dynamic inner dimensions where
    the model has them). Dynamic image height/width take a size the model accepts (sized_specs); a sequence length
    the source model itself rejects (a Conv1D kernel longer than the sequence) is left out, not failed. A model that
    returns its recurrent states and takes them back in is validated on two consecutive calls (next_call)."""
    example = _read_npz(source.input_example, source) if source.input_example else None
    cases = [("input example", example)] if example else []
    if config.sample_data:
        cases.append(("sample data", read_sample_data(config.sample_data, source, config.sample_rows)))
    rng, hints = np.random.default_rng(config.seed), worker.call("input_hints")
    specs, second_size = sized_specs(source.inputs, worker, example)
    length = default_length(worker, specs) if example is None else None
    cases += [(f"generated batch {b}", generated_inputs(specs, b, rng, example, hints, length))
              for b in config.batch_sizes]
    if has_dynamic_inner_dimension(specs):
        batch = max(config.batch_sizes)
        cases += [(f"generated batch {batch}, length {n}", generated_inputs(specs, batch, rng, example, hints, n))
                  for n in config.sequence_lengths if _accepted(worker, specs, n)]
    if second_size:
        bigger = _with_image_size(source.inputs, second_size)
        cases.append((f"generated batch 1, image {second_size}×{second_size}",
                      generated_inputs(bigger, 1, rng, example, hints)))
    if source.kind in ("keras", "h5") and (pairs := worker.call("recurrent_state_pairs")):
        batch = max(config.batch_sizes)
        first_call = dict(cases)[f"generated batch {batch}"]
        cases.append((f"generated batch {batch}, call 2 (the states call 1 returned)",
                      next_call(worker, first_call, generated_inputs(specs, batch, rng, example, hints), pairs)))
    return cases


def next_call(worker: KerasWorker, inputs: list[np.ndarray], fresh: list[np.ndarray],
              pairs: list[tuple[int, int]]) -> list[np.ndarray]:
    """The inputs of a recurrent model's next call: `fresh` inputs, with each state input replaced by the state the
    source model returned for `inputs` (pairs: output index, input index). Validating this second call proves the
    ONNX model takes states in as Keras does, not only that it starts from zeros (which a model that ignored its
    state inputs would also pass)."""
    outputs = worker.call("predict", inputs=inputs)
    following = list(fresh)
    for output_index, input_index in pairs:
        following[input_index] = np.asarray(outputs[output_index]).astype(fresh[input_index].dtype)
    return following


def default_length(worker: KerasWorker, specs: list[TensorSpec]) -> int | None:
    """The length of dynamic sequence dimensions in the generated batches: the first of 8, 16, … 256 the source model
    answers at (a Conv1D with a kernel of 9 rejects 8); None where no dimension is dynamic.

    Raises StageError: it answers at none of them."""
    if not has_dynamic_inner_dimension(specs):
        return None
    for length in SEQUENCE_LENGTHS:
        if _accepted(worker, specs, length):
            return length
    raise StageError(f"the source model answers at none of the sequence lengths {SEQUENCE_LENGTHS} for its dynamic "
                     "dimensions; log an input example with the model (mlflow input_example) so validation uses its size")


def sized_specs(specs: list[TensorSpec], worker: KerasWorker,
                example: list[np.ndarray] | None = None) -> tuple[list[TensorSpec], int | None]:
    """The specs with each dynamic image dimension fixed, and a second image size the model accepts (None if the
    model has no dynamic image dimension, or accepts no other size).

    An image dimension is a dynamic inner dimension of an input of rank ≥ 4 (batch, height, width[, depth],
    channels); dimensions of rank-2/3 inputs are sequence lengths and stay dynamic (validation.sequence_lengths).
    The size is the input example's when it has one, else the first of IMAGE_SIZES at which the source model
    (one call at batch 1) answers: a convnet that halves its input five times needs 32, a 3-pixel image is not
    an image it can take (MobileNetV3 then ends in a 1×1 map that onnxruntime's Conv rejects)."""
    if not any(_image_axes(spec) for spec in specs):
        return specs, None
    if example is not None:
        sized = [TensorSpec(name=s.name, shape=[None, *a.shape[1:]], dtype=s.dtype) if _image_axes(s) else s
                 for s, a in zip(specs, example)]
        accepted = [size for size in IMAGE_SIZES if size > max(_fixed_image_sizes(sized)) and
                    _accepted(worker, _with_image_size(specs, size))][:1]
        return sized, (accepted or [None])[0]
    accepted = []
    for size in IMAGE_SIZES:
        if _accepted(worker, _with_image_size(specs, size)):
            accepted.append(size)
            if len(accepted) == 2:
                break
    if not accepted:
        raise StageError(f"the source model answers at none of the image sizes {IMAGE_SIZES} for its dynamic "
                         "height/width; log an input example with the model (mlflow input_example) so validation "
                         "uses its size")
    return _with_image_size(specs, accepted[0]), (accepted[1:] or [None])[0]


def _image_axes(spec: TensorSpec) -> list[int]:
    return [i for i, d in enumerate(spec.shape) if i > 0 and d is None] if len(spec.shape) >= 4 else []


def _with_image_size(specs: list[TensorSpec], size: int) -> list[TensorSpec]:
    return [TensorSpec(name=s.name, dtype=s.dtype,
                       shape=[size if i in _image_axes(s) else d for i, d in enumerate(s.shape)]) for s in specs]


def _fixed_image_sizes(specs: list[TensorSpec]) -> list[int]:
    return [d for s in specs if len(s.shape) >= 4 for d in s.shape[1:-1] if d is not None] or [0]


def _accepted(worker: KerasWorker, specs: list[TensorSpec], sequence_length: int = 8) -> bool:
    """Whether the source model computes an output for zeros of these shapes at batch 1 (dynamic sequence
    dimensions at sequence_length): a size it rejects is no size to hold the ONNX model to."""
    probe = [np.zeros([1, *(d if d is not None else sequence_length for d in s.shape[1:])], dtype=s.dtype)
             for s in specs]
    try:
        outputs = worker.call("predict", inputs=probe)
    except WorkerError as error:
        if "child process" in str(error):  # died or timed out: not the model's answer about a size
            raise
        return False
    return all(np.asarray(output).size for output in outputs)


def read_sample_data(uri: str, source: SourceModel, max_rows: int) -> list[np.ndarray]:
    """A .npz of arrays named after the model's inputs (or one unnamed array for a one-input model): a local file,
    or an artifact URI downloaded into a temporary directory removed once the rows are read."""
    if Path(uri).is_file():
        return _sample_rows(Path(uri), uri, source, max_rows)
    with tempfile.TemporaryDirectory(prefix="onnx-stage-sample-data-") as download:
        try:
            path = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=download))
        except Exception as error:
            raise StageError(f"validation.sample_data {uri!r} cannot be read: {str(error).splitlines()[0]}") from None
        return _sample_rows(path, uri, source, max_rows)


def _sample_rows(path: Path, uri: str, source: SourceModel, max_rows: int) -> list[np.ndarray]:
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
