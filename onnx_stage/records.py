"""The small typed records the five tasks hand to each other: names, file paths and figures, never live models."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class Record(BaseModel):
    model_config = ConfigDict(coerce_numbers_to_str=True)  # MLflow 3 hands out versions as int or str


class ModelRef(Record):
    """What to convert: a registered model version (by version, alias, or latest), or a model file."""

    name: str = Field(..., min_length=1, description="Registered model name (for a file source: the twin's base name).")
    version: str | None = Field(None, description="Model version number. Leave empty to use the alias or the latest.")
    alias: str | None = Field(None, description="Model version alias, e.g. champion. Exclusive with version.")
    path: str | None = Field(
        None, description="Instead of the registry: a .h5/.keras file, a local path or an MLflow artifact URI."
    )

    @model_validator(mode="after")
    def _one_selector(self) -> "ModelRef":
        if sum(x is not None for x in (self.version, self.alias, self.path)) > 1:
            raise ValueError("give at most one of version, alias and path")
        return self

    def describe(self) -> str:
        if self.path:
            return f"{self.path} (as {self.name})"
        if self.version:
            return f"models:/{self.name}/{self.version}"
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name} (latest)"


class TensorSpec(Record):
    name: str
    shape: list[int | None]
    dtype: str


class FetchedSource(Record):
    """A source fetched into the run, before the child loads it: what the conversion lease and the lookup of an
    existing twin need (its bytes' hash), known a model load earlier."""

    ref: ModelRef
    registry_version: str | None = Field(None, description="Resolved version number; None for a file source.")
    run_id: str | None = None
    aliases: list[str] = []
    artifact_dir: Path = Field(..., description="The fetched version's artifacts (or the file source itself).")
    model_file: Path = Field(..., description="What the child loads: a model file, a SavedModel or MLflow model directory.")
    kind: Literal["keras", "h5", "saved_model", "sklearn", "lightgbm", "xgboost"] = Field(
        ..., description="Detected from the artifact (onnx_stage/sources/), never configured.")
    sha256: str


class SourceModel(FetchedSource):
    """A fetched source as the child loaded it: its interface and what the twin must match."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    input_example: Path | None = Field(None, description=".npz of the version's input example, if it has one.")
    library_versions: dict[str, str] = {}
    weights_bytes: int | None = Field(None, description="Size of the model's weights in memory.")
    native_runtime: str = Field("keras", description="What the benchmark times the ONNX twin against, e.g. lightgbm.")
    mlflow_model_dir: Path | None = Field(
        None, description="The source's MLflow model directory (MLmodel), if it has one: its signature, input "
                          "example and pyfunc are what the twin must match.")
    answer_form: str = Field("keras", description="How the source's pyfunc shapes answers (onnx_twin_pyfunc).")


class OnnxArtifacts(Record):
    onnx_path: Path
    json_path: Path
    text_path: Path
    route: str
    route_failures: dict[str, str] = {}
    route_versions: dict[str, str] = {}
    opset: int
    conversion_seconds: float
    conversion_peak_rss_bytes: int | None = Field(None, description="Peak RSS of the Keras child while converting.")
    graph_optimizations: list[str] = Field(default_factory=list,
                                           description="Optimisation steps kept, with their rewrite counts.")
    graph_optimizations_refused: dict[str, str] = Field(default_factory=dict,
                                                        description="Steps not kept, and why.")
    validation_outputs: CaseOutputs | None = Field(
        None, description="This file's outputs on the validation inputs, when graph optimisation computed them.")


def _save_cases(path: Path, role: str, arrays_per_case: list[list[np.ndarray]]) -> None:
    np.savez(path, **{f"case{i}_{role}{k}": array for i, arrays in enumerate(arrays_per_case)
                      for k, array in enumerate(arrays)})


def _read_cases(path: Path, role: str, cases: int, arrays_per_case: int) -> list[list[np.ndarray]]:
    with np.load(path) as saved:
        return [[saved[f"case{i}_{role}{k}"] for k in range(arrays_per_case)] for i in range(cases)]


class ValidationInputs(Record):
    """The cases validation feeds both models, chosen before any model runs; the first is the reference
    (the version's input example when it has one) that becomes the registered model's input example."""

    path: Path = Field(..., description=".npz with the arrays of case i, input k under `case{i}_input{k}`.")
    labels: list[str]
    inputs_per_case: int

    def cases(self) -> list[tuple[str, list[np.ndarray]]]:
        return list(zip(self.labels, _read_cases(self.path, "input", len(self.labels), self.inputs_per_case)))

    @classmethod
    def save(cls, cases: list[tuple[str, list[np.ndarray]]], path: Path) -> "ValidationInputs":
        _save_cases(path, "input", [arrays for _, arrays in cases])
        return cls(path=path, labels=[label for label, _ in cases], inputs_per_case=len(cases[0][1]))


class CaseOutputs(Record):
    """A model's outputs on every validation case, computed once per run. The source model's are what the ONNX
    model, each variant and the served session options are held to; the ONNX model's own, when graph optimisation
    already ran it, are what validation compares with them."""

    path: Path = Field(..., description=".npz with output k of case i under `case{i}_output{k}`.")
    cases_count: int
    outputs_per_case: int
    inputs_path: Path | None = Field(None, description="The ValidationInputs file they are the outputs on.")
    onnx_sha256: str | None = Field(None, description="sha256 of the ONNX file that computed them; None: the source.")

    def cases(self) -> list[list[np.ndarray]]:
        return _read_cases(self.path, "output", self.cases_count, self.outputs_per_case)

    def computed_by(self, onnx_path: Path, inputs: "ValidationInputs") -> bool:
        """Whether these are the outputs of the file now at onnx_path (same bytes) on `inputs`."""
        return self.inputs_path == inputs.path and self.onnx_sha256 == sha256_of(onnx_path)

    @classmethod
    def save(cls, outputs_per_case: list[list[np.ndarray]], path: Path, inputs_path: Path | None = None,
             onnx_path: Path | None = None) -> "CaseOutputs":
        _save_cases(path, "output", outputs_per_case)
        return cls(path=path, cases_count=len(outputs_per_case), outputs_per_case=len(outputs_per_case[0]),
                   inputs_path=inputs_path, onnx_sha256=sha256_of(onnx_path) if onnx_path else None)


def sha256_of(path: Path) -> str:
    """Of a file's bytes; of a directory (SavedModel, MLflow model), of its files' relative paths and bytes."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with file.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class OutputParity(Record):
    output: str
    atol: float
    rtol: float
    max_abs: float
    max_rel: float
    mean_abs: float
    cosine_similarity: float
    fraction_out_of_tolerance: float
    within_tolerance: bool
    argmax_agreement: float | None = Field(None, description="Classifier outputs: rows whose argmax agrees.")
    top5_overlap: float | None = Field(None, description="Classifier outputs with > 5 classes: mean top-5 overlap.")
    non_finite_source: int = Field(0, description="NaN/±inf values in the source model's output (each one fails).")
    non_finite_onnx: int = Field(0, description="NaN/±inf values in the ONNX output (each one fails).")


class ParityCase(Record):
    label: str
    batch_size: int
    outputs: list[OutputParity]


class ParityReport(Record):
    passed: bool
    atol: float
    rtol: float
    cases: list[ParityCase]
    reference_inputs: Path = Field(..., description=".npz of the input example fed to both models.")
    reference_outputs: Path = Field(..., description=".npz of Keras' outputs on reference_inputs.")
    keras_outputs: CaseOutputs


class VariantOutcome(Record):
    kind: str
    onnx_model: OnnxArtifacts
    parity: ParityReport | None = Field(None, description="Set when the variant passed its gate.")
    refused: str | None = Field(None, description="Why the variant was not registered.")


class LatencyStats(Record):
    runtime: str
    batch_size: int
    runs: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    mean_ci95_ms: float = Field(..., description="Half-width of the 95 % confidence interval of the mean.")
    throughput_per_s: float
    histogram_ms: dict[str, list[float]] = Field(
        default_factory=dict, description="Latency histogram: `edges` (ms, log-spaced) and `counts` per bin.")
    samples_ms: np.ndarray = Field(default_factory=lambda: np.empty(0), repr=False, exclude=True,
                                   description="Every timed call (ms): for the latency plot; not in benchmark.json")

    model_config = ConfigDict(arbitrary_types_allowed=True)  # samples_ms: one array, not a list of float objects


KERAS, ORT_DEFAULT, ORT_TUNED = "keras", "onnxruntime default", "onnxruntime tuned"


class BenchReport(Record):
    rows: list[LatencyStats] = []
    session_options: dict[str, int | str] = Field(
        default_factory=dict, description="onnxruntime options the twin is registered (and served) with."
    )
    tuning_refused: str | None = Field(
        None, description="Why the fastest options were not registered: they broke parity with Keras."
    )

    @property
    def registered_runtime(self) -> str:
        return ORT_TUNED if self.session_options else ORT_DEFAULT

    @property
    def native_runtime(self) -> str:
        """The source framework's own predict the ONNX model is timed against, e.g. keras, lightgbm."""
        return next((r.runtime for r in self.rows if not r.runtime.startswith("onnxruntime")), KERAS)

    def speedup(self, batch_size: int, baseline: str | None = None, runtime: str | None = None) -> float | None:
        """p50 of baseline (default: the source's native runtime) / p50 of runtime (default: the registered
        onnxruntime configuration)."""
        runtime, baseline = runtime or self.registered_runtime, baseline or self.native_runtime
        by_runtime = {r.runtime: r for r in self.rows if r.batch_size == batch_size}
        if {baseline, runtime} <= by_runtime.keys():
            return by_runtime[baseline].p50_ms / by_runtime[runtime].p50_ms
        return None


FULL_PRECISION = "fp32"  # the converted model itself; variants (fp16, int8_*) are registered beside it


class RegisteredTwin(Record):
    name: str
    version: str
    uri: str
    run_id: str
    created: bool = Field(..., description="False when an identical twin already existed (idempotent rerun).")
    variant: str = Field(FULL_PRECISION, description="fp32 (the converted model), or the kind of a smaller variant.")
