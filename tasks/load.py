"""load: resolve the source model (registry version or file), fetch it, detect its kind and hash it (fetch); then
read its interface in the child process (load), which the flow asks for once it holds the conversion lease for that
hash and has found no twin of it."""
from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from prefect import task
from prefect.cache_policies import NO_CACHE

from onnx_stage.consumer import answer_form
from onnx_stage.errors import StageError, disk_full
from onnx_stage.keras_worker import KerasWorker, WorkerError
from onnx_stage.sources import SOURCE_KINDS, detect_source
from onnx_stage.sources.kind import read_flavors
from onnx_stage.sources.file_checks import check_model_file
from onnx_stage.records import FetchedSource, ModelRef, SourceModel, TensorSpec, sha256_of


def load_source(ref: ModelRef, worker: KerasWorker, work_dir: Path,
                custom_object_modules: Sequence[str] = ()) -> SourceModel:
    """fetch_source, then open_source: the whole load, for a caller that takes no lease in between."""
    return open_source(fetch_source(ref, work_dir), worker, work_dir, custom_object_modules)


def fetch_source(ref: ModelRef, work_dir: Path) -> FetchedSource:
    """Resolve the version, download its artifacts into work_dir/source, detect the source kind and hash the model.

    Raises:
        StageError: no such model, version or alias; the download fails; no supported model in the artifacts."""
    version = None if ref.path else resolve_version(MlflowClient(), ref)
    artifact_dir = fetch_artifacts(ref, version, work_dir / "source")
    source = detect_source(artifact_dir)
    check_model_file(source.path)
    return FetchedSource(
        ref=ref,
        registry_version=str(version.version) if version else None,
        run_id=version.run_id if version else None,
        aliases=list(version.aliases) if version else [],
        artifact_dir=artifact_dir,
        model_file=source.path,
        kind=source.kind.name,
        sha256=sha256_of(source.path),
    )


def open_source(fetched: FetchedSource, worker: KerasWorker, work_dir: Path,
                custom_object_modules: Sequence[str] = ()) -> SourceModel:
    """Load the fetched model in the child and read its interface (input/output names, shapes, dtypes).

    Raises:
        StageError: the child cannot load it (names the error, e.g. an unknown custom layer)."""
    kind = SOURCE_KINDS[fetched.kind]
    worker.serve(kind.operations)
    try:
        interface = worker.call("load_model", model_file=str(fetched.model_file),
                                custom_object_modules=tuple(custom_object_modules))
    except WorkerError as error:
        raise StageError(f"cannot load {fetched.ref.describe()}: {error}") from None
    inputs = [TensorSpec(**spec) for spec in interface["inputs"]]
    artifact_dir = fetched.artifact_dir
    return SourceModel(
        **dict(fetched),
        inputs=inputs,
        outputs=[TensorSpec(**spec) for spec in interface["outputs"]],
        input_example=save_input_example(artifact_dir, inputs, work_dir / "input_example.npz"),
        library_versions=interface["library_versions"],
        weights_bytes=interface["weights_bytes"],
        native_runtime=kind.native_runtime,
        mlflow_model_dir=artifact_dir if (artifact_dir / "MLmodel").is_file() else None,
        answer_form=answer_form(fetched.kind, read_flavors(artifact_dir)),
    )


def resolve_version(client: MlflowClient, ref: ModelRef) -> ModelVersion:
    try:
        client.get_registered_model(ref.name)
    except MlflowException:
        known = sorted(m.name for m in client.search_registered_models(max_results=50))
        raise StageError(f"registered model {ref.name!r} not found at {mlflow.get_registry_uri()}; "
                         f"registered models there: {', '.join(known) or 'none'}") from None
    if ref.alias:
        try:
            return client.get_model_version_by_alias(ref.name, ref.alias)
        except MlflowException:
            aliases = client.get_registered_model(ref.name).aliases
            raise StageError(f"model {ref.name!r} has no alias {ref.alias!r}; its aliases: "
                             f"{', '.join(f'{a}→v{v}' for a, v in aliases.items()) or 'none'}") from None
    versions = client.search_model_versions(f"name='{ref.name}'", order_by=["version_number DESC"])
    if ref.version is None:
        if not versions:
            raise StageError(f"model {ref.name!r} has no versions yet; register one first")
        return client.get_model_version(ref.name, versions[0].version)  # search results carry no aliases
    match = [v for v in versions if str(v.version) == str(ref.version)]
    if not match:
        raise StageError(f"model {ref.name!r} has no version {ref.version}; its versions: "
                         f"{', '.join(str(v.version) for v in reversed(versions)) or 'none'}")
    return client.get_model_version(ref.name, match[0].version)


def fetch_artifacts(ref: ModelRef, version: ModelVersion | None, destination: Path) -> Path:
    if ref.path and Path(ref.path).exists():
        return Path(ref.path)
    uri = ref.path or f"models:/{ref.name}/{version.version}"
    destination.mkdir(parents=True, exist_ok=True)
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(destination)))
    except (MlflowException, OSError) as error:
        cause = f"{os.strerror(errno.ENOSPC)} in {destination}" if disk_full(error, destination) else \
            str(error).splitlines()[0]
        raise StageError(f"cannot fetch {uri}: {cause}") from None


def save_input_example(artifact_dir: Path, inputs: list[TensorSpec], destination: Path) -> Path | None:
    """Store the version's input example as arrays named after the model's inputs, cast to their dtypes."""
    if not (artifact_dir / "MLmodel").is_file():
        return None
    example = Model.load(str(artifact_dir)).load_input_example(str(artifact_dir))
    if example is None:
        return None
    if isinstance(example, dict):
        arrays = [np.asarray(example[spec.name]) for spec in inputs]
    elif len(inputs) == 1:
        arrays = [np.asarray(getattr(example, "to_numpy", lambda: example)())]
    else:
        raise StageError(f"the input example of a {len(inputs)}-input model must be a dict keyed by input name")
    np.savez(destination, **{spec.name: _batched(a.astype(spec.dtype), spec) for spec, a in zip(inputs, arrays)})
    return destination


def _batched(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """The example as a batch of the spec's shape; with a dynamic inner dimension (a token sequence's length) it
    keeps its own shape, an unbatched example gaining the batch axis."""
    if None not in spec.shape[1:]:
        return array.reshape(-1, *spec.shape[1:])
    return array[np.newaxis] if array.ndim == len(spec.shape) - 1 else array


@task(name="fetch", cache_policy=NO_CACHE)
def fetch(ref: ModelRef, work_dir: Path) -> FetchedSource:
    return fetch_source(ref, work_dir)


@task(name="load", cache_policy=NO_CACHE)
def load(fetched: FetchedSource, worker: KerasWorker, work_dir: Path,
         custom_object_modules: Sequence[str] = ()) -> SourceModel:
    return open_source(fetched, worker, work_dir, custom_object_modules)
