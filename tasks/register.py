"""register: log the ONNX model (onnx flavor) as a new version of `{name}-onnx`, or return the identical twin."""
from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from importlib.metadata import version as installed_version
from pathlib import Path

import mlflow
import numpy as np
import onnx
import pandas as pd
from mlflow import MlflowClient
from mlflow.models import Model, ModelSignature
from mlflow.models.model import MLMODEL_FILE_NAME
from mlflow.models.utils import _save_example  # MLflow's example writer; no public one (pinned: uv.lock)
from mlflow.types import Schema, TensorSpec
from mlflow.utils.requirements_utils import warn_dependency_requirement_mismatches
from onnx import helper
from onnx.external_data_helper import ExternalDataInfo, uses_external_data
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.transactions import Transaction, get_transaction

from onnx_stage import onnx_twin_pyfunc
from onnx_stage.config import StageConfig
from onnx_stage.consumer import Answer, consumer_uris, read_outputs, tabular_answer
from onnx_stage.errors import StageError
from onnx_stage.onnx_files import graph_inputs
from onnx_stage.plot import latency_plot
from onnx_stage.sessions import PROVIDERS
from onnx_stage.tracking import name_clause, use_experiment
from onnx_stage.records import (FULL_PRECISION, BenchReport, FetchedSource, OnnxArtifacts, ParityReport, RegisteredTwin,
                                SourceModel, ValidationInputs)

TAG = "onnx_stage."
TWIN_OF = TAG + "twin_of"  # on every twin; the webhook bridge ignores versions that carry it (no loop)
# "false" when registered, "true" written last once the twin is published: "false" is half-made. Twins registered
# before the marker existed carry none and count as complete (an upgrade must not delete them).
COMPLETE = TAG + "complete"


def twin_name(source: FetchedSource, config: StageConfig) -> str:
    return config.registry.name_template.format(name=source.ref.name)


def conversion_key(source: FetchedSource, config: StageConfig) -> str:
    """What one twin stands for: the source's bytes under one set of conversion settings (the lease's key)."""
    return f"{twin_name(source, config)}:{source.sha256}:{config.artifact_fingerprint()}"


def find_existing_twin(source: FetchedSource, config: StageConfig) -> RegisteredTwin | None:
    """The complete fp32 twin of the same source file and settings; half-made versions of it (a run that died
    between registering and its completion marker) are deleted, so the caller converts again.

    Call it holding the conversion lease: then no other run is still making those versions."""
    name, client = twin_name(source, config), MlflowClient()
    if not client.search_registered_models(filter_string=name_clause(name)):
        return None
    query = f"{name_clause(name)} and tags.`{TAG}source_sha256`='{source.sha256}'"
    complete = None
    for found in client.search_model_versions(query, order_by=["version_number DESC"]):
        if found.tags.get(TAG + "config_fingerprint") != config.artifact_fingerprint():
            continue
        if found.tags.get(COMPLETE) == "false":
            print(f"removing half-made version {found.version} of {name} (its run stopped before completing it)")
            client.delete_model_version(name, found.version)
        elif found.tags.get(TAG + "variant") == FULL_PRECISION and complete is None:
            complete = RegisteredTwin(name=name, version=found.version, uri=f"models:/{name}/{found.version}",
                                      run_id=found.run_id, created=False)
    return complete


def save_input_example(source: SourceModel, inputs: ValidationInputs, work_dir: Path) -> Path:
    """The MLflow model directory whose input example the twin carries: the source version's when it has one, else
    work_dir/input-example holding the reference case (inputs' first) in the form the source's signature names (a
    dict by input name without one), written by MLflow's own example writer (what mlflow.onnx.save_model calls).

    Needs only the inputs, so the flow writes it while the child converts: MLflow's JSON of a 224×224 image example
    takes ~0.45 s that would otherwise come after validation."""
    source_model = Model.load(str(source.mlflow_model_dir)) if source.mlflow_model_dir else None
    if source_model and source_model.saved_input_example_info:
        return source.mlflow_model_dir
    example_dir, example_model = work_dir / "input-example", Model()
    example_dir.mkdir(exist_ok=True)
    _, reference = inputs.cases()[0]
    schema = source_model.signature.inputs if source_model and source_model.signature else None
    _save_example(example_model, _input_example(schema, [spec.name for spec in source.inputs], reference),
                  str(example_dir))
    example_model.save(str(example_dir / MLMODEL_FILE_NAME))
    return example_dir


def package_model(source: SourceModel, onnx_model: OnnxArtifacts, example_dir: Path, work_dir: Path,
                  variant: str = FULL_PRECISION) -> Path:
    """The twin's MLflow model directory: the onnx flavor (model.onnx, pinned requirements, renderings) and a
    python_function flavor served by onnx_twin_pyfunc (carried in `code/`), so the twin answers requests as the
    source's pyfunc does. The signature is the source version's where it has one; the input example is copied from
    example_dir (save_input_example).

    Writes nothing to the registry, so the flow builds it while validation runs."""
    model_dir = work_dir / f"mlflow-model-{variant}"
    # A model with external data is saved as its graph only and its data files are linked in: not loaded into this
    # process and written again (2+ GB)
    proto = onnx.load(str(onnx_model.onnx_path), load_external_data=False)
    data_files = sorted({ExternalDataInfo(t).location for t in proto.graph.initializer if uses_external_data(t)})
    source_model = Model.load(str(source.mlflow_model_dir)) if source.mlflow_model_dir else None
    # An MLflow source without a signature gets a twin without one: a derived signature would make pyfunc refuse
    # requests (a plain list) that the source accepts
    signature = source_model.signature if source_model else onnx_signature(proto)
    mlflow.onnx.save_model(
        proto, str(model_dir),
        signature=signature,
        pip_requirements=[f"{p}=={installed_version(p)}" for p in ("mlflow", "onnx", "onnxruntime", "pandas")],
        save_as_external_data=bool(data_files), onnx_execution_providers=PROVIDERS,
        extra_files=[str(onnx_model.json_path), str(onnx_model.text_path)],
        code_paths=[str(Path(onnx_twin_pyfunc.__file__))],
    )
    model = Model.load(str(model_dir))
    _copy_input_example(Model.load(str(example_dir)), example_dir, model, model_dir)
    for name in data_files:
        _link_or_copy(onnx_model.onnx_path.parent / name, model_dir / name)
    if data_files:
        model.model_size_bytes = sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file())
    _serve_with_twin_pyfunc(model, {"answer": source.answer_form})  # completed by register_twin
    model.save(str(model_dir / MLMODEL_FILE_NAME))
    return model_dir


def _input_example(schema: Schema | None, input_names: list[str], reference: list[np.ndarray]) -> object:
    """The reference inputs in the form the signature's inputs name (without a signature: as the ONNX graph's
    would, a dict by input name): a dict by input name, else the single array or a one-table DataFrame."""
    if schema is None:
        return dict(zip(input_names, reference))
    names = schema.input_names()
    if schema.is_tensor_spec() and not schema.has_input_names() and len(reference) == 1:
        return reference[0]
    if not schema.is_tensor_spec() and len(reference) == 1:
        return pd.DataFrame(reference[0], columns=names)
    return dict(zip(names, reference))


def _copy_input_example(example_model: Model, example_dir: Path, model: Model, model_dir: Path) -> None:
    info = dict(example_model.saved_input_example_info)
    for key in ("artifact_path", "serving_input_path"):
        if info.get(key) and (example_dir / info[key]).is_file():
            shutil.copyfile(example_dir / info[key], model_dir / info[key])
    model.saved_input_example_info = info


def _serve_with_twin_pyfunc(model: Model, config: dict[str, str]) -> None:
    """Replace the onnx flavor's own pyfunc loader (mlflow.onnx) with onnx_twin_pyfunc, keeping its environment."""
    flavor = model.flavors[mlflow.pyfunc.FLAVOR_NAME]
    flavor.update(loader_module=Path(onnx_twin_pyfunc.__file__).stem, config=config)


def _link_or_copy(source: Path, destination: Path) -> None:
    try:
        os.link(source, destination)
    except OSError:  # another filesystem
        shutil.copyfile(source, destination)


def warm_requirement_check() -> None:
    """MLflow checks a model's requirements against the installed packages by scanning every installed
    distribution once per process (~0.8 s); the flow does it while the child loads the model, off packaging's path."""
    warn_dependency_requirement_mismatches([f"mlflow=={mlflow.__version__}"])


def onnx_signature(proto: onnx.ModelProto) -> ModelSignature:
    """The signature the ONNX graph declares: dynamic dimensions (batch, sequence length) become -1."""
    def specs(values: Sequence[onnx.ValueInfoProto]) -> Schema:
        return Schema([TensorSpec(helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type),
                                  tuple(d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim),
                                  v.name) for v in values])
    return ModelSignature(specs(graph_inputs(proto.graph)), specs(proto.graph.output))


def register_twin(source: SourceModel, model_dir: Path, onnx_model: OnnxArtifacts, parity: ParityReport,
                  bench: BenchReport, config: StageConfig, work_dir: Path, variant: str = FULL_PRECISION,
                  source_answers: dict[str, Answer] | None = None) -> RegisteredTwin:
    """One new version of the twin model; variants (fp16, int8) are versions of their own, tagged with the kind.

    Raises:
        StageError: the source's pyfunc answers something no ONNX output reproduces (nothing is registered)."""
    pyfunc_config = twin_pyfunc_config(source, source_answers, parity)
    use_experiment(config.registry.experiment)
    reports = [_write_json(work_dir / "validation.json", parity.model_dump(mode="json")),
               _write_json(work_dir / "benchmark.json", bench.model_dump(mode="json"))]
    if bench.rows:
        reports.append(latency_plot(bench, work_dir / "latency.png", f"{source.ref.describe()} latency"))
    _add_evidence(model_dir, reports, bench.session_options, pyfunc_config)
    with mlflow.start_run(run_name=f"onnx {variant} {source.ref.describe()}") as run:
        mlflow.log_params({"source": source.ref.describe(), "route": onnx_model.route, "opset": onnx_model.opset})
        mlflow.log_metrics(_metrics(parity, bench, onnx_model))
        mlflow.log_artifacts(str(model_dir), artifact_path="model")
        if config.benchmark.raw_samples:
            mlflow.log_dict({f"{r.runtime} batch {r.batch_size}": r.samples_ms.tolist() for r in bench.rows},
                            "benchmark_samples.json")
    name = twin_name(source, config)
    created = mlflow.register_model(f"runs:/{run.info.run_id}/model", name,
                                    tags=_version_tags(source, onnx_model, parity, bench, config, variant))
    twin = RegisteredTwin(name=name, version=created.version, uri=f"models:/{name}/{created.version}",
                          run_id=run.info.run_id, created=True, variant=variant)
    MlflowClient().update_model_version(name, created.version,
                                        description=version_description(source, twin, onnx_model, parity, bench))
    return twin


def twin_pyfunc_config(source: SourceModel, source_answers: dict[str, Answer] | None,
                       parity: ParityReport) -> dict[str, str]:
    """onnx_twin_pyfunc's config: the source's answer form, and for a tabular source which ONNX output its
    `predict` is (found by comparing the source pyfunc's answer to an ndarray with the source's outputs)."""
    config = {"answer": source.answer_form}
    if source.answer_form != "tabular":
        return config
    status, answer = (source_answers or {}).get("ndarray", ("error", "the source is no MLflow model"))
    if status != "ok":
        raise StageError(f"{source.ref.describe()}'s pyfunc refuses an ndarray of its own input example ({answer}), so "
                         "which ONNX output its predict is cannot be told; nothing registered")
    tolerance = parity.cases[0].outputs[0]
    try:
        config.update(tabular_answer(answer, read_outputs(parity.reference_outputs), tolerance.atol, tolerance.rtol))
    except ValueError as error:
        raise StageError(f"{source.ref.describe()}: {error}; nothing registered") from None
    return config


def version_description(source: SourceModel, twin: RegisteredTwin, onnx_model: OnnxArtifacts, parity: ParityReport,
                        bench: BenchReport) -> str:
    """What the MLflow UI shows on the twin's version page (markdown): what it is, how it was proven, the change
    a consumer makes."""
    source_uri = (f"models:/{source.ref.name}/{source.registry_version}" if source.registry_version
                  else str(source.ref.path))
    before, after = consumer_uris(source, twin)
    by_alias = (f" By alias, as aliases are mirrored: `{after}` instead of `{before}` (aliases move with new "
                "versions; this version's source stays the one above).") if source.aliases else ""
    worst = max(o.max_abs for c in parity.cases for o in c.outputs)
    runtime = bench.registered_runtime if twin.variant == FULL_PRECISION else f"onnxruntime {twin.variant}"
    speedup = bench.speedup(1, runtime=runtime) if bench.rows else None
    speed = f" It runs **{speedup:.1f}×** {source.native_runtime} at batch 1 (p50)." if speedup else ""
    return (f"ONNX twin ({twin.variant}) of `{source_uri}` (sha256 `{source.sha256[:12]}`), converted by "
            f"`{onnx_model.route}` at opset {onnx_model.opset}.\n\n"
            f"Parity with the source: max |Δ| {worst:.2g} over {len(parity.cases)} input sets "
            f"(atol {parity.atol:g}, rtol {parity.rtol:g}).{speed}\n\n"
            f"**Consumers:** load `{twin.uri}` instead of `{source_uri}`: nothing else changes (same input names, "
            f"request forms and answers; needs only mlflow and onnxruntime).{by_alias}")


def _add_evidence(model_dir: Path, reports: list[Path], session_options: dict[str, int | str],
                  pyfunc_config: dict[str, str]) -> None:
    """Add the reports and the benchmark's chosen session options to the packaged model's onnx flavor, as
    save_model's extra_files and onnx_session_options would have (they exist only after packaging), and the
    twin pyfunc's answer config."""
    model = Model.load(str(model_dir))
    _serve_with_twin_pyfunc(model, pyfunc_config)
    flavor = model.flavors["onnx"]
    for report in reports:
        shutil.copy(report, model_dir / "extra_files" / report.name)
        flavor.setdefault("extra_files", []).append({"path": f"extra_files/{report.name}"})
    flavor["onnx_session_options"] = session_options or None
    model.save(str(model_dir / MLMODEL_FILE_NAME))


def publish_twin(source: FetchedSource, twin: RegisteredTwin, config: StageConfig) -> None:
    """Point the source at its twin and mirror its aliases (a variant's as `<alias>-<kind>`, e.g. champion-int8_dynamic):
    done last, once the twin has proven loadable."""
    client = MlflowClient()
    suffix = "" if twin.variant == FULL_PRECISION else f"-{twin.variant}"
    if source.registry_version:
        client.set_model_version_tag(source.ref.name, source.registry_version, TAG + "onnx_twin" + suffix, twin.uri)
    if config.registry.mirror_aliases:
        for alias in source.aliases:
            client.set_registered_model_alias(twin.name, alias + suffix, twin.version)
    client.set_model_version_tag(twin.name, twin.version, COMPLETE, "true")


def _version_tags(source: SourceModel, onnx_model: OnnxArtifacts, parity: ParityReport, bench: BenchReport,
                  config: StageConfig, variant: str) -> dict[str, str]:
    runtime = bench.registered_runtime if variant == FULL_PRECISION else f"onnxruntime {variant}"
    tags = {
        COMPLETE: "false",
        TAG + "variant": variant,
        TWIN_OF: f"{source.ref.name}/{source.registry_version}" if source.registry_version else str(source.ref.path),
        TAG + "source_name": source.ref.name,
        TAG + "source_version": source.registry_version or "",
        TAG + "source_run_id": source.run_id or "",
        TAG + "source_sha256": source.sha256,
        TAG + "config_fingerprint": config.artifact_fingerprint(),
        TAG + "converter_route": onnx_model.route,
        TAG + "converter_versions": json.dumps({**onnx_model.route_versions, **source.library_versions}),
        TAG + "opset": str(onnx_model.opset),
        TAG + "graph_optimizations": ",".join(onnx_model.graph_optimizations) or "none",
        TAG + "parity_max_abs": f"{max(o.max_abs for c in parity.cases for o in c.outputs):.3g}",
    }
    for batch_size in sorted({r.batch_size for r in bench.rows}):
        speedup = bench.speedup(batch_size, runtime=runtime)
        if speedup is not None:
            tags[TAG + f"speedup_vs_keras_b{batch_size}"] = f"{speedup:.2f}"
    return tags


def _metrics(parity: ParityReport, bench: BenchReport, onnx_model: OnnxArtifacts) -> dict[str, float]:
    metrics = {"conversion_seconds": onnx_model.conversion_seconds}
    for case in parity.cases:
        for output in case.outputs:
            prefix = _metric_key(f"parity.{case.label}.{output.output}")
            metrics[f"{prefix}.max_abs"], metrics[f"{prefix}.max_rel"] = output.max_abs, output.max_rel
    for row in bench.rows:
        prefix = _metric_key(f"latency.{row.runtime}.batch{row.batch_size}")
        metrics.update({f"{prefix}.{key}": getattr(row, key) for key in
                        ("p50_ms", "p95_ms", "p99_ms", "mean_ms", "mean_ci95_ms", "throughput_per_s")})
    return metrics


def _metric_key(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.\-/]+", "_", text)


def _write_json(path: Path, content: dict) -> Path:
    path.write_text(json.dumps(content, indent=2))
    return path


@task(name="find-existing-twin", cache_policy=NO_CACHE)
def find_twin(source: FetchedSource, config: StageConfig) -> RegisteredTwin | None:
    return find_existing_twin(source, config)


@task(name="warm-up-packaging", cache_policy=NO_CACHE)
def warm_up_packaging() -> None:
    warm_requirement_check()


@task(name="save-input-example", cache_policy=NO_CACHE)
def input_example(source: SourceModel, inputs: ValidationInputs, work_dir: Path) -> Path:
    return save_input_example(source, inputs, work_dir)


@task(name="package", cache_policy=NO_CACHE)
def package(source: SourceModel, onnx_model: OnnxArtifacts, example_dir: Path, work_dir: Path,
            variant: str = FULL_PRECISION) -> Path:
    return package_model(source, onnx_model, example_dir, work_dir, variant)


@task(name="register", cache_policy=NO_CACHE)
def register(source: SourceModel, model_dir: Path, onnx_model: OnnxArtifacts, parity: ParityReport,
             bench: BenchReport, config: StageConfig, work_dir: Path, variant: str = FULL_PRECISION,
             source_answers: dict[str, Answer] | None = None) -> RegisteredTwin:
    twin = register_twin(source, model_dir, onnx_model, parity, bench, config, work_dir, variant, source_answers)
    get_transaction().set("twin", twin)
    return twin


@register.on_rollback
def _delete_half_made_version(transaction: Transaction) -> None:
    delete_version(transaction.get("twin"))


def delete_version(twin: RegisteredTwin) -> None:
    """Remove a twin version that failed its checks, and its registered model if that was its only version
    (nothing is left behind that a consumer could mistake for a twin)."""
    client = MlflowClient()
    client.delete_model_version(twin.name, twin.version)
    if not client.search_model_versions(name_clause(twin.name), max_results=1):
        client.delete_registered_model(twin.name)


@task(name="publish", cache_policy=NO_CACHE)
def publish(source: FetchedSource, twin: RegisteredTwin, config: StageConfig) -> None:
    publish_twin(source, twin, config)
