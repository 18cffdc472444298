"""convert: source → ONNX in the child process (the kind's routes tried in order), then the JSON and text renderings."""
from __future__ import annotations

from pathlib import Path

import onnx
from prefect import task
from prefect.cache_policies import NO_CACHE

from onnx_stage.config import ConvertConfig
from onnx_stage.errors import StageError
from onnx_stage.keras_worker import KerasWorker, WorkerError
from onnx_stage.rendering import write_renderings
from onnx_stage.sources import SOURCE_KINDS
from tasks.records import OnnxArtifacts, SourceModel


def convert_source(source: SourceModel, worker: KerasWorker, config: ConvertConfig, out_dir: Path) -> OnnxArtifacts:
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "model.onnx"
    try:
        outcome = worker.call("convert", routes=SOURCE_KINDS[source.kind].routes(config.routes), opset=config.opset,
                              onnx_path=str(onnx_path))
    except WorkerError as error:
        refusal = str(error).partition("refused before conversion: ")[2]
        if refusal:  # a layer no route can convert faithfully (keras_layers): said as such, not as a failure
            raise StageError(f"{source.ref.describe()} refused before conversion: {refusal}") from None
        raise StageError(f"conversion of {source.ref.describe()} failed: {error}") from None
    artifacts = OnnxArtifacts(
        onnx_path=onnx_path,
        json_path=out_dir / "model.json",
        text_path=out_dir / "model.onnx.txt",
        route=outcome["route"],
        route_failures=outcome["failures"],
        route_versions=outcome["route_versions"],
        opset=outcome["opset"],
        conversion_seconds=outcome["seconds"],
        conversion_peak_rss_bytes=outcome["peak_rss_bytes"],
    )
    write_renderings(onnx.load(str(onnx_path), load_external_data=False), artifacts.json_path, artifacts.text_path,
                     config.json_max_tensor_elements)
    return artifacts


@task(name="convert", cache_policy=NO_CACHE)
def convert(source: SourceModel, worker: KerasWorker, config: ConvertConfig, out_dir: Path) -> OnnxArtifacts:
    return convert_source(source, worker, config, out_dir)
