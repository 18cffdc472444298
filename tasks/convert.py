"""convert: source → ONNX in the child process (the kind's routes tried in order); then, in the flow process, the
graph optimisations that prove themselves on the validation inputs, and the JSON and text renderings."""
from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import onnx
from prefect import task
from prefect.cache_policies import NO_CACHE

from onnx_stage.config import ConvertConfig, ValidateConfig
from onnx_stage.errors import StageError
from onnx_stage.graph_optimize import optimize_graph
from onnx_stage.inputs import validation_inputs
from onnx_stage.keras_worker import KerasWorker, WorkerError
from onnx_stage.routes import crash_marker
from onnx_stage.rendering import write_renderings
from onnx_stage.sources import SOURCE_KINDS
from onnx_stage.records import CaseOutputs, OnnxArtifacts, SourceModel, ValidationInputs


def convert_source(source: SourceModel, worker: KerasWorker, config: ConvertConfig, out_dir: Path,
                   inputs: ValidationInputs | None = None) -> OnnxArtifacts:
    """convert_in_child, then optimize_and_render: the converted model (out_dir/model.onnx), optimised, with its
    renderings."""
    return optimize_and_render(source, convert_in_child(source, worker, config, out_dir), worker, config, inputs)


def convert_in_child(source: SourceModel, worker: KerasWorker, config: ConvertConfig, out_dir: Path) -> OnnxArtifacts:
    """The first of the kind's routes (`config.routes`) that converts the source, in the child: out_dir/model.onnx as
    the converter wrote it (the renderings' paths are named, not yet written).

    Raises:
        StageError: a layer no route converts faithfully (refused before any route ran), or every route failed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "model.onnx"
    try:
        outcome = convert_surviving_crashes(worker, SOURCE_KINDS[source.kind].routes(config.routes), config.opset,
                                            onnx_path)
    except WorkerError as error:
        refusal = str(error).partition("refused before conversion: ")[2]
        if refusal:  # a layer no route can convert faithfully (keras_layers): said as such, not as a failure
            raise StageError(f"{source.ref.describe()} refused before conversion: {refusal}") from None
        raise StageError(f"conversion of {source.ref.describe()} failed: {error}") from None
    return OnnxArtifacts(
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


def optimize_and_render(source: SourceModel, artifacts: OnnxArtifacts, worker: KerasWorker, config: ConvertConfig,
                        inputs: ValidationInputs | None = None) -> OnnxArtifacts:
    """The converted model optimised in place by `config.graph_optimizations` where each step keeps the outputs on the
    validation cases (`inputs`; without them, generated as validation's defaults generate them), then its JSON and text
    renderings written. Given `inputs`, the model's outputs on them come back too (`validation_outputs`): validation
    reuses them."""
    if config.graph_optimizations:
        cases = inputs.cases() if inputs else validation_inputs(source, worker, ValidateConfig())
        optimized = optimize_graph(artifacts.onnx_path, config.graph_optimizations, [arrays for _, arrays in cases],
                                   config.graph_optimization_seconds)
        outputs = CaseOutputs.save(optimized.outputs, artifacts.onnx_path.parent / "onnx_outputs.npz", inputs.path,
                                   artifacts.onnx_path) if inputs and optimized.outputs else None
        artifacts = artifacts.model_copy(update={"graph_optimizations": optimized.kept,
                                                 "graph_optimizations_refused": optimized.refused,
                                                 "validation_outputs": outputs})
    write_renderings(onnx.load(str(artifacts.onnx_path), load_external_data=False), artifacts.json_path,
                     artifacts.text_path, config.json_max_tensor_elements)
    return artifacts


def convert_surviving_crashes(worker: KerasWorker, routes: list[str], opset: int, onnx_path: Path) -> dict[str, Any]:
    """The child's convert over `routes`; a route that kills the child (a crash or abort inside a converter: the
    worker replaces the child and loads the model again) is reported as `route X crashed (signal N)` and the routes
    after it are tried. The crash-free path costs one small file write per route (routes.crash_marker).

    Raises WorkerError: every route failed (the crashed ones named in the message), or the child died otherwise."""
    crashed: dict[str, str] = {}
    while True:
        try:
            outcome = worker.call("convert", routes=routes, opset=opset, onnx_path=str(onnx_path))
        except WorkerError as error:
            marker = crash_marker(str(onnx_path))
            if error.signal_number is None or not marker.is_file():
                if crashed:
                    raise WorkerError(f"{error}; {'; '.join(crashed.values())}") from None
                raise
            name = marker.read_text().split()[-1]  # the route that was running
            marker.unlink()
            crashed[name] = f"route {name} crashed (signal {error.signal_number}, {signal.Signals(error.signal_number).name})"
            routes = routes[routes.index(name) + 1:]
            if not routes:
                raise WorkerError("no converter route worked: " + "; ".join(crashed.values())) from None
            continue
        outcome["failures"] = {**crashed, **outcome["failures"]}
        return outcome


@task(name="convert", cache_policy=NO_CACHE)
def convert(source: SourceModel, worker: KerasWorker, config: ConvertConfig, out_dir: Path) -> OnnxArtifacts:
    return convert_in_child(source, worker, config, out_dir)


@task(name="optimize-graph", cache_policy=NO_CACHE)
def optimize(source: SourceModel, converted: OnnxArtifacts, worker: KerasWorker, config: ConvertConfig,
             inputs: ValidationInputs) -> OnnxArtifacts:
    return optimize_and_render(source, converted, worker, config, inputs)
