"""validate: onnx.checker, then ONNX vs Keras on the input example and on generated batches (batch 1 and N)."""
from __future__ import annotations

import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
import onnx
import onnxruntime as ort
from mlflow.models import Model
from prefect import task
from prefect.cache_policies import NO_CACHE

from onnx_stage.config import StageConfig, ValidateConfig
from onnx_stage.consumer import Answer, answer_differences, answer_table, answers, request_forms
from onnx_stage.errors import StageError
from onnx_stage.inputs import validation_inputs
from onnx_stage.keras_worker import KerasWorker
from onnx_stage.onnx_files import graph_inputs
from onnx_stage.divergence import KerasLayerOutput, locate_divergence, onnx_intermediate_values
from onnx_stage.parity import close_enough, compare_output, output_passes
from onnx_stage.rendering import write_renderings
from onnx_stage.sessions import SessionOptionsDict, open_session
from onnx_stage.quantize import calibration_inputs
from onnx_stage.variants import CALIBRATED_KINDS, build_variant, cosine_refusal, vacuous_refusal
from onnx_stage.records import (BenchReport, CaseOutputs, OnnxArtifacts, ParityCase, ParityReport, RegisteredTwin,
                                SourceModel, ValidationInputs, VariantOutcome)


class ParityError(StageError):
    def __init__(self, figures: str, blame: str, source_runtime: str) -> None:
        self.figures, self.blame = figures, blame
        super().__init__(f"ONNX output differs from the {source_runtime} model beyond tolerance, nothing registered: "
                         f"{figures}; {blame}")


def choose_inputs(source: SourceModel, worker: KerasWorker, config: ValidateConfig, work_dir: Path) -> ValidationInputs:
    return ValidationInputs.save(validation_inputs(source, worker, config), work_dir / "validation_inputs.npz")


def predict_source_outputs(worker: KerasWorker, inputs: ValidationInputs, work_dir: Path) -> CaseOutputs:
    return CaseOutputs.save(keras_outputs(worker, [arrays for _, arrays in inputs.cases()]),
                            work_dir / "keras_outputs.npz")


def check_parity(source: SourceModel, onnx_model: OnnxArtifacts, worker: KerasWorker, config: ValidateConfig,
                 work_dir: Path, inputs: ValidationInputs | None = None,
                 expected: CaseOutputs | None = None) -> ParityReport:
    """ONNX vs the source model on every validation case; inputs and expected outputs are chosen and predicted
    here unless the flow already has them. The ONNX outputs are those graph optimisation computed when they are this
    file's (same sha256) on these inputs, else an onnxruntime session's, run here."""
    try:
        onnx.checker.check_model(str(onnx_model.onnx_path), full_check=True)
    except onnx.checker.ValidationError as error:
        raise StageError(f"the converted model fails onnx.checker: {str(error).splitlines()[0]}") from None
    inputs = inputs or choose_inputs(source, worker, config, work_dir)
    cases = inputs.cases()
    computed = onnx_model.validation_outputs
    if computed is not None and not computed.computed_by(onnx_model.onnx_path, inputs):
        computed = None  # not this file's outputs on these inputs: run it
    with ThreadPoolExecutor(max_workers=1) as pool:  # onnxruntime computes while the Keras child predicts
        onnx_run = None if computed else pool.submit(onnx_outputs, onnx_model.onnx_path, [a for _, a in cases])
        expected = expected or predict_source_outputs(worker, inputs, work_dir)
        (input_names, output_names), actual_outputs = (
            onnx_run.result() if onnx_run else (io_names(onnx_model.onnx_path), computed.cases()))
    expected_outputs = expected.cases()
    report_cases = compare_cases(cases, expected_outputs, actual_outputs, output_names, config)
    failing = [arrays for (_, arrays), case in zip(cases, report_cases) if not case_passes(case, config)]
    report = ParityReport(
        passed=not failing,
        atol=config.atol, rtol=config.rtol, cases=report_cases,
        reference_inputs=_write_npz(work_dir / "reference_inputs.npz", input_names, cases[0][1]),
        reference_outputs=_write_npz(work_dir / "reference_outputs.npz", output_names, expected_outputs[0]),
        keras_outputs=expected,
    )
    if failing:
        blame = blame_layer(onnx_model, worker, dict(zip(input_names, failing[0])), config)
        raise ParityError(summarise(report), blame, source.native_runtime)
    return report


def compare_cases(cases: list[tuple[str, list[np.ndarray]]], expected: list[list[np.ndarray]],
                  actual: list[list[np.ndarray]], output_names: list[str], config: ValidateConfig) -> list[ParityCase]:
    """Per case and output, the parity figures at the output's tolerances."""
    return [ParityCase(label=label, batch_size=len(arrays[0]), outputs=[
                compare_output(name, e, a, **config.tolerance_for(name).model_dump())
                for name, e, a in zip(output_names, expected_case, actual_case)])
            for (label, arrays), expected_case, actual_case in zip(cases, expected, actual)]


def case_passes(case: ParityCase, config: ValidateConfig) -> bool:
    return all(output_passes(output, config.min_argmax_agreement) for output in case.outputs)


def onnx_outputs(onnx_path: Path, cases: list[list[np.ndarray]], options: SessionOptionsDict | None = None,
                 ) -> tuple[tuple[list[str], list[str]], list[list[np.ndarray]]]:
    """(input names, output names) of the ONNX model and its outputs on every case."""
    session = open_session(onnx_path, options)
    input_names = [i.name for i in session.get_inputs()]
    names = (input_names, [o.name for o in session.get_outputs()])
    return names, [_run(session, input_names, arrays) for arrays in cases]


def io_names(onnx_path: Path) -> tuple[list[str], list[str]]:
    """(input names, output names) of the ONNX model as an onnxruntime session lists them, read from the graph
    without its weights."""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return [i.name for i in graph_inputs(graph)], [o.name for o in graph.output]


def _run(session: ort.InferenceSession, input_names: list[str], arrays: list[np.ndarray]) -> list[np.ndarray]:
    """One onnxruntime call; an input the source model accepted but the ONNX model rejects is a StageError naming the
    shapes and onnxruntime's reason (nothing registered)."""
    try:
        return session.run(None, dict(zip(input_names, arrays)))
    except Exception as error:  # onnxruntime raises its own pybind exception types
        shapes = ", ".join(f"{name} {tuple(a.shape)}" for name, a in zip(input_names, arrays))
        reason = str(error).strip().splitlines()[0][:300]
        raise StageError(f"the ONNX model fails on inputs the source model accepts ({shapes}), nothing registered: "
                         f"{reason}") from None


def check_served_parity(onnx_model: OnnxArtifacts, inputs: ValidationInputs, parity: ParityReport, bench: BenchReport,
                        config: ValidateConfig) -> BenchReport:
    """Parity again at the session options the benchmark chose for serving (graph optimisations may fuse ops
    differently): options that break it are not registered, and the twin is served with the defaults validation
    proved."""
    if not bench.session_options:
        return bench
    cases = inputs.cases()
    (_, output_names), actual_outputs = onnx_outputs(onnx_model.onnx_path, [a for _, a in cases], bench.session_options)
    compared = compare_cases(cases, parity.keras_outputs.cases(), actual_outputs, output_names, config)
    broken = [f"{case.label} / {output.output}: max|Δ|={output.max_abs:.3g}" for case in compared
              for output in case.outputs if not output_passes(output, config.min_argmax_agreement)]
    if not broken:
        return bench
    return bench.model_copy(update={"session_options": {}, "tuning_refused": (
        f"options {bench.session_options} break parity with the source model ({'; '.join(broken[:3])}); "
        "served with defaults")})


def keras_outputs(worker: KerasWorker, cases: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """Keras' outputs for every case, with one predict call per distinct inner shape (cases concatenated, outputs
    split again): each call pays Keras' per-layer dispatch once (0.3 s on a convnet)."""
    groups: dict[tuple, list[int]] = {}
    for index, inputs in enumerate(cases):
        groups.setdefault(tuple(array.shape[1:] for array in inputs), []).append(index)
    results: list[list[np.ndarray]] = [[] for _ in cases]
    for indices in groups.values():
        batch = [np.concatenate([cases[i][k] for i in indices]) for k in range(len(cases[indices[0]]))]
        outputs = worker.call("predict", inputs=batch)
        bounds = np.cumsum([0] + [len(cases[i][0]) for i in indices])
        for i, start, end in zip(indices, bounds[:-1], bounds[1:]):
            results[i] = [output[start:end] for output in outputs]
    return results


def blame_layer(onnx_model: OnnxArtifacts, worker: KerasWorker, feed: dict[str, np.ndarray],
                config: ValidateConfig) -> str:
    if explanation := worker.call("explain_mismatch", inputs=list(feed.values())):  # e.g. float32 tree splits
        return explanation
    keras_layers = [KerasLayerOutput(**layer) for layer in worker.call("layer_outputs", inputs=list(feed.values()))]
    onnx_values = onnx_intermediate_values(onnx_model.onnx_path, feed)
    divergence = locate_divergence(keras_layers, onnx_values, config.atol, config.rtol)
    return divergence.describe() if divergence else "no single layer of the source model could be blamed"


def gate_variants(source: SourceModel, onnx_model: OnnxArtifacts, worker: KerasWorker, config: StageConfig,
                  work_dir: Path, inputs: ValidationInputs | None = None,
                  expected: CaseOutputs | None = None) -> list[VariantOutcome]:
    """Build each configured variant and hold it to its own gate against Keras (onnx_stage/variants.py: tolerances,
    argmax agreement, cosine floor, and a gate that can tell an input-blind model) on the validation cases (the
    fp32 validation's, with Keras' outputs on them, when given); refuse those that fail."""
    outcomes = []
    for variant in config.variants:
        variant_dir = work_dir / variant.kind
        calibration = (calibration_inputs(source, worker, config.validation, variant.calibration_rows)
                       if variant.kind in CALIBRATED_KINDS else None)
        variant_path = build_variant(variant.kind, onnx_model.onnx_path, variant_dir, calibration)
        artifacts = onnx_model.model_copy(update={
            "onnx_path": variant_path, "json_path": variant_dir / "model.json", "text_path": variant_dir / "model.onnx.txt",
            "validation_outputs": None})
        write_renderings(onnx.load(str(variant_path)), artifacts.json_path, artifacts.text_path,
                         config.convert.json_max_tensor_elements)
        gate = config.validation.model_copy(update={
            "atol": variant.atol, "rtol": variant.rtol, "min_argmax_agreement": variant.min_argmax_agreement,
            "per_output": {}})
        try:
            parity = check_parity(source, artifacts, worker, gate, variant_dir, inputs, expected)
        except ParityError as refusal:
            reason = f"failed its accuracy gate: {refusal.figures}; {refusal.blame}"
            outcomes.append(VariantOutcome(kind=variant.kind, onnx_model=artifacts, refused=reason))
            continue
        except StageError as refusal:
            outcomes.append(VariantOutcome(kind=variant.kind, onnx_model=artifacts, refused=str(refusal)))
            continue
        output_names = [output.output for output in parity.cases[0].outputs]
        refused = (cosine_refusal(parity, variant)
                   or vacuous_refusal(parity.keras_outputs.cases(), output_names, variant))
        outcomes.append(VariantOutcome(kind=variant.kind, onnx_model=artifacts, parity=None if refused else parity,
                                       refused=refused))
    return outcomes


def summarise(report: ParityReport) -> str:
    failing = [(c, o) for c in report.cases for o in c.outputs if not o.within_tolerance] or \
              [(c, o) for c in report.cases for o in c.outputs]
    return "; ".join(
        f"{c.label} / {o.output}: max|Δ|={o.max_abs:.3g}, max rel={o.max_rel:.3g}"
        + (f", argmax agreement={o.argmax_agreement:.1%}" if o.argmax_agreement is not None else "")
        for c, o in failing[:4]
    ) + f" (atol={report.atol:g}, rtol={report.rtol:g})"


def consumer_requests(source: SourceModel, inputs: ValidationInputs) -> dict[str, Any]:
    """Every request form a consumer may send (onnx_stage.consumer), built from the reference inputs and named as
    the source's signature names them (column names of a column-based signature, else the model's input names)."""
    _, reference = inputs.cases()[0]
    signature = Model.load(str(source.mlflow_model_dir)).signature if source.mlflow_model_dir else None
    if signature is None:
        return request_forms([spec.name for spec in source.inputs], reference)
    dtypes = signature.inputs.numpy_types()
    if signature.inputs.is_tensor_spec():
        names = signature.inputs.input_names() if signature.inputs.has_input_names() else [
            spec.name for spec in source.inputs]
        if len(dtypes) == len(reference):  # as the signature's consumers send them (float64 for a float64 model)
            reference = [array.astype(dtype) for array, dtype in zip(reference, dtypes)]
        return request_forms(names, reference)
    if len(reference) == 1 and len(set(dtypes)) == 1:
        reference = [reference[0].astype(dtypes[0])]
    return request_forms([spec.name for spec in source.inputs], reference, signature.inputs.input_names())


def ask_source(source: SourceModel, inputs: ValidationInputs, worker: KerasWorker) -> dict[str, Answer] | None:
    """The source version's own pyfunc answers to every request form, from the child; None for a model file, which
    has no pyfunc."""
    if source.mlflow_model_dir is None:
        return None
    return worker.call("source_answers", model_dir=str(source.mlflow_model_dir),
                       requests=consumer_requests(source, inputs))


def check_consumer_load(twin: RegisteredTwin, report: ParityReport, source: SourceModel, inputs: ValidationInputs,
                        source_answers: dict[str, Answer] | None, work_dir: Path) -> list[tuple[str, str, str]]:
    """Load the twin as a registry consumer does (pyfunc, with its registered session options and providers):
    its session computes the source's outputs on the reference inputs at the tolerances validation used, and it
    answers every request form the source version's pyfunc answers with the same type, shape and values.

    Returns (request form, source's answer, twin's answer) per form, for the summary.

    Raises:
        StageError: an output or a request form differs (the caller removes the version).
    """
    # inside the run's scratch directory (removed with it even if the run is killed); pyfunc's own would be kept
    with tempfile.TemporaryDirectory(prefix="consumer-check-", dir=work_dir) as download:
        return _check_loaded(mlflow.pyfunc.load_model(twin.uri, dst_path=download), twin, report, source, inputs,
                             source_answers)


def _check_loaded(loaded: mlflow.pyfunc.PyFuncModel, twin: RegisteredTwin, report: ParityReport, source: SourceModel,
                  inputs: ValidationInputs, source_answers: dict[str, Answer] | None) -> list[tuple[str, str, str]]:
    reference, expected = np.load(report.reference_inputs), np.load(report.reference_outputs)
    outputs = loaded.get_raw_model().run(expected.files, {k: reference[k] for k in reference.files})
    tolerances = {o.output: o for o in report.cases[0].outputs}
    for name, actual in zip(expected.files, outputs):
        if not close_enough(expected[name], actual, tolerances[name].atol, tolerances[name].rtol):
            raise StageError(f"{twin.uri} loaded through mlflow.pyfunc disagrees with the source model on output "
                             f"{name!r}: max|Δ|={np.abs(actual - expected[name]).max():.3g}; the version was removed")
    twin_answers = answers(loaded, consumer_requests(source, inputs))
    if source_answers is not None:
        atol, rtol = max(t.atol for t in tolerances.values()), max(t.rtol for t in tolerances.values())
        if differences := answer_differences(source_answers, twin_answers, atol, rtol):
            raise StageError(f"{twin.uri} does not answer like {source.ref.describe()} through mlflow.pyfunc: "
                             f"{differences[0]}" + (f" (and {len(differences) - 1} more request forms)"
                                                    if len(differences) > 1 else "") + "; the version was removed")
    return answer_table(source_answers, twin_answers)


def _write_npz(path: Path, names: list[str], arrays: list[np.ndarray]) -> Path:
    np.savez(path, **dict(zip(names, arrays)))
    return path


@task(name="choose-validation-inputs", cache_policy=NO_CACHE)
def validation_cases(source: SourceModel, worker: KerasWorker, config: ValidateConfig, work_dir: Path) -> ValidationInputs:
    return choose_inputs(source, worker, config, work_dir)


@task(name="predict-source-outputs", cache_policy=NO_CACHE)
def source_outputs(inputs: ValidationInputs, worker: KerasWorker, work_dir: Path) -> CaseOutputs:
    return predict_source_outputs(worker, inputs, work_dir)


@task(name="validate", cache_policy=NO_CACHE)
def validate(source: SourceModel, onnx_model: OnnxArtifacts, inputs: ValidationInputs, expected: CaseOutputs,
             worker: KerasWorker, config: ValidateConfig, work_dir: Path) -> ParityReport:
    return check_parity(source, onnx_model, worker, config, work_dir, inputs, expected)


@task(name="ask-source-pyfunc", cache_policy=NO_CACHE)
def source_pyfunc_answers(source: SourceModel, inputs: ValidationInputs, worker: KerasWorker) -> dict[str, Answer] | None:
    return ask_source(source, inputs, worker)


@task(name="check-served-parity", cache_policy=NO_CACHE)
def check_served_options(onnx_model: OnnxArtifacts, inputs: ValidationInputs, parity: ParityReport, bench: BenchReport,
                         config: ValidateConfig) -> BenchReport:
    return check_served_parity(onnx_model, inputs, parity, bench, config)


@task(name="validate-variants", cache_policy=NO_CACHE)
def validate_variants(source: SourceModel, onnx_model: OnnxArtifacts, worker: KerasWorker, config: StageConfig,
                      work_dir: Path, inputs: ValidationInputs, expected: CaseOutputs) -> list[VariantOutcome]:
    return gate_variants(source, onnx_model, worker, config, work_dir, inputs, expected)


@task(name="check-consumer-load", cache_policy=NO_CACHE)
def check_consumer(twin: RegisteredTwin, report: ParityReport, source: SourceModel, inputs: ValidationInputs,
                   source_answers: dict[str, Answer] | None, work_dir: Path) -> list[tuple[str, str, str]]:
    return check_consumer_load(twin, report, source, inputs, source_answers, work_dir)
