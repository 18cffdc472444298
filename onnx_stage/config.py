"""The one typed configuration of the stage: defaults in configs/default.yaml, overridable per run."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ConverterRoute = Literal["tf2onnx_lean", "onnxmltools", "keras_export", "tf2onnx"]
GraphOptimization = Literal["neutral_elementwise", "shape_simplification", "layer_norm_fusion", "loop_simplification",
                            "recurrent_fusion", "global_pooling"]
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent / "configs" / "default.yaml"  # configs/, shipped inside
Count = Annotated[int, Field(ge=1)]  # a batch size or length: 0 or less would compare nothing (parity "nan%")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConvertConfig(_Section):
    opset: int = Field(17, ge=13, le=21, description="ONNX opset the converted model targets.")
    routes: list[ConverterRoute] = Field(
        default_factory=lambda: ["tf2onnx_lean", "onnxmltools", "keras_export", "tf2onnx"],
        min_length=1,
        description="Converter routes tried in order; the first that produces a valid model wins.",
    )
    timeout_seconds: float = Field(
        900, gt=0, description="Kill the Keras child process if one load/convert/predict call takes longer."
    )
    json_max_tensor_elements: int = Field(
        1024, ge=0, description="Tensors with more elements are abbreviated in model.json (the file says so)."
    )
    custom_object_modules: list[str] = Field(
        default_factory=list,
        description="Python modules the Keras child imports before loading: where custom layers are registered.",
    )
    graph_optimizations: list[GraphOptimization] = Field(
        default_factory=lambda: ["neutral_elementwise", "shape_simplification", "layer_norm_fusion",
                                 "loop_simplification", "recurrent_fusion", "global_pooling"],
        description="Rewrites of the converted graph (onnx_stage/graph_passes/), tried in order; each is kept "
                    "only if the model still computes the same outputs on the validation inputs (and, with "
                    "graph_optimization_seconds > 0, is measured faster). [] registers the converter's graph as it is.",
    )
    graph_optimization_seconds: float = Field(
        0.0, ge=0, description="Time each kept step against the model before it (interleaved, this many seconds) and "
                               "keep it only if faster. 0: no timing per conversion (each step was measured faster "
                               "on the benchmark models by benchmarks/onnx_vs_keras.py; a 1 s gate adds 1-4 s to a "
                               "conversion and refuses good steps when the machine is busy).")


class Tolerance(_Section):
    atol: float = Field(..., ge=0, description="Absolute tolerance.")
    rtol: float = Field(..., ge=0, description="Relative tolerance.")


class ValidateConfig(_Section):
    atol: float = Field(1e-4, ge=0, description="Absolute tolerance of the ONNX vs Keras comparison.")
    rtol: float = Field(1e-3, ge=0, description="Relative tolerance of the ONNX vs Keras comparison.")
    batch_sizes: list[Count] = Field(
        default_factory=lambda: [1, 16],
        min_length=1,
        description="Batch sizes of the generated inputs (more than one proves the dynamic batch dimension).",
    )
    min_argmax_agreement: float = Field(
        1.0, ge=0, le=1, description="For classifier outputs: the fraction of rows whose argmax must agree."
    )
    seed: int = Field(0, ge=0, description="Seed of the generated validation inputs.")
    sequence_lengths: list[Count] = Field(
        default_factory=lambda: [3, 17], description="Extra lengths tried on inputs with a dynamic inner dimension."
    )
    sample_data: str | None = Field(
        None, description="Your own validation inputs: a .npz path or MLflow artifact URI, arrays named after inputs."
    )
    sample_rows: int = Field(256, ge=1, description="At most this many rows of sample_data are compared.")
    per_output: dict[str, Tolerance] = Field(
        default_factory=dict, description="Tolerances for named outputs (the Keras output layer names)."
    )

    def tolerance_for(self, output: str) -> Tolerance:
        return self.per_output.get(output, Tolerance(atol=self.atol, rtol=self.rtol))


class BenchmarkConfig(_Section):
    enabled: bool = Field(True, description="Time onnxruntime against compiled Keras.")
    batch_sizes: list[Count] = Field(default_factory=lambda: [1, 8, 32], min_length=1, description="Batch sizes timed.")
    warmup_runs: int = Field(10, ge=0, description="Untimed runs before timing.")
    timed_runs: int = Field(200, ge=5, description="Minimum timed runs per runtime and batch size.")
    min_seconds: float = Field(1.0, ge=0, description="Keep timing until this long has passed (and timed_runs done).")
    tune_session: bool = Field(
        True, description="Try onnxruntime thread counts and optimisation levels; register the fastest."
    )
    screening_runs: int = Field(30, ge=3, description="Timed runs per candidate while tuning.")
    raw_samples: bool = Field(
        False, description="Also log every timed call's latency as the run artifact benchmark_samples.json (the "
                           "model's benchmark.json keeps percentiles, CI and a histogram).")
    tune_thread_counts: bool = Field(
        False, description="Also try onnxruntime thread counts and register the fastest. They are measured on the "
                           "machine running the stage and bind every consumer to them (benchmarks/registered_threads.py"
                           " shows the cost): off, only core-count-free options are registered.")


VariantKind = Literal["fp16", "int8_dynamic", "int8_static"]
# fp16 rounds each value to 11 significant bits (relative error ~5e-4 per op): 0.999 leaves room for depth and still
# catches a broken graph. int8: the stage's int8_static of a small trained convnet measured 0.9994-0.9997 against
# Keras, the same model with saturating full-range int8 weights 0.966 (onnx_stage/quantize.py): 0.99 tells them apart.
DEFAULT_MIN_COSINE: dict[str, float] = {"fp16": 0.999, "int8_dynamic": 0.99, "int8_static": 0.99}
# int8 exists to be faster; fp16 exists for its size (on this CPU it ran at 0.87-0.93x the fp32 speed)
DEFAULT_MIN_SPEEDUP: dict[str, float | None] = {"fp16": None, "int8_dynamic": 1.0, "int8_static": 1.0}


class VariantConfig(_Section):
    kind: VariantKind = Field(..., description="fp16 weights, dynamic int8 (matrix products), or static QDQ int8.")
    atol: float = Field(..., ge=0, description="Absolute tolerance of this variant vs Keras.")
    rtol: float = Field(..., ge=0, description="Relative tolerance of this variant vs Keras.")
    min_argmax_agreement: float = Field(0.99, ge=0, le=1, description="Classifier rows whose argmax must agree.")
    min_cosine: float | None = Field(
        None, ge=-1, le=1,
        description="Lowest cosine similarity of each output to Keras on every case (default 0.999 fp16, 0.99 int8).")
    min_speedup: float | None = Field(
        None, gt=0, description="Registered only if fp32 p50 / variant p50 at batch 1 exceeds this (default 1.0 "
                                "for int8 kinds; null for fp16, kept for its size). Needs the benchmark enabled.")
    calibration_rows: int = Field(
        32, ge=1, description="int8_static: input rows (validation.sample_data, else generated) its activation "
                              "ranges are calibrated on; calibration memory grows with rows × activation size.")

    @model_validator(mode="after")
    def _defaults_by_kind(self) -> "VariantConfig":
        if self.min_cosine is None:
            self.min_cosine = DEFAULT_MIN_COSINE[self.kind]
        if "min_speedup" not in self.model_fields_set:
            self.min_speedup = DEFAULT_MIN_SPEEDUP[self.kind]
        return self


class RegisterConfig(_Section):
    name_template: str = Field(
        "{name}-onnx", pattern=r".*\{name\}.*", description="Registered model name of the ONNX twin."
    )
    experiment: str = Field("onnx-stage", min_length=1, description="MLflow experiment of the conversion runs.")
    mirror_aliases: bool = Field(True, description="Copy the source version's aliases onto the twin.")
    lease_wait_seconds: float = Field(
        1800, gt=0, description="How long a run waits while another run converts the same model (then it reports "
                                "the other's twin).")
    lease_seconds: float = Field(
        120, ge=60, description="Lease on a conversion in progress, renewed while it runs: a run that dies frees "
                                "its model after this long (Prefect server only; embedded: at once).")


class SweepConfig(_Section):
    cron: str = Field("*/30 * * * *", description="When the sweep deployment runs (5-field cron, server time zone).")
    model_name_pattern: str = Field(
        "%", min_length=1, description="SQL LIKE pattern of the registered models swept, e.g. digits-% (% = all)."
    )
    model_tag: str | None = Field(
        None, description="Sweep only registered models carrying this tag, as key=value, e.g. onnx_stage.sweep=true.",
    )
    min_age_minutes: float = Field(
        10, ge=0, description="Skip versions younger than this: the webhook path is still converting them."
    )
    max_versions: int = Field(20, ge=1, le=500, description="Most versions one sweep converts; the next takes the rest.")
    max_concurrency: int = Field(2, ge=1, le=8, description="Conversions running at once (each uses a Keras process).")

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, cron: str) -> str:
        if len(cron.split()) != 5:
            raise ValueError(f"{cron!r} is not a 5-field cron expression (minute hour day month weekday), "
                             "e.g. '*/30 * * * *'")
        return cron

    @field_validator("model_tag")
    @classmethod
    def _key_equals_value(cls, tag: str | None) -> str | None:
        key, sep, _ = (tag or "").partition("=")
        if tag is not None and not (sep and key.strip()):
            raise ValueError(f"{tag!r} is not key=value, e.g. onnx_stage.sweep=true")
        return tag

    def model_tag_filter(self) -> tuple[str, str] | None:
        if self.model_tag is None:
            return None
        key, _, value = self.model_tag.partition("=")
        return key.strip(), value.strip()


class StageConfig(_Section):
    convert: ConvertConfig = Field(default_factory=ConvertConfig)
    validation: ValidateConfig = Field(default_factory=ValidateConfig)
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig)
    registry: RegisterConfig = Field(default_factory=RegisterConfig)
    variants: list[VariantConfig] = Field(
        default_factory=list,
        description="Optional fp16 / int8 variants, each registered as its own version only if it passes its gate.",
    )
    sweep: SweepConfig = Field(default_factory=SweepConfig)

    def artifact_fingerprint(self) -> str:
        """Hash of the settings that decide what gets registered: same source + same fingerprint = same twin."""
        relevant = {"convert": self.convert.model_dump(exclude={"timeout_seconds"}),
                    "variants": [v.model_dump() for v in self.variants],
                    "validation": self.validation.model_dump(), "name_template": self.registry.name_template}
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


class ConfigError(ValueError):
    pass


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> StageConfig:
    """Read a YAML config (default: configs/default.yaml) and apply `section.key=value` overrides.

    Raises ConfigError (one line: the file, the setting or the YAML position, and what is wrong) on a missing file,
    malformed YAML, a malformed override or a value out of its bounds."""
    path = Path(path) if path else DEFAULT_CONFIG_PATH
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass --config with an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(_yaml_problem(path, error)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, not {type(data).__name__}")
    for override in overrides:
        _apply_override(data, override)
    try:
        return StageConfig.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(f"{_origin(e['loc'], path, overrides)}{'.'.join(map(str, e['loc']))}: {e['msg']}"
                             for e in error.errors())
        raise ConfigError(f"invalid configuration: {problems}") from None


def _origin(location: tuple, path: Path, overrides: list[str]) -> str:
    """Where a bad setting came from: the --set that gave it (the last one naming it or a section above it), else
    the config file."""
    keys = [".".join(map(str, location[:depth])) for depth in range(len(location), 0, -1)]
    given = [o for o in overrides if o.partition("=")[0].strip() in keys]
    return f"--set {given[-1]}: " if given else f"{path}: "


def _yaml_problem(path: Path, error: yaml.YAMLError) -> str:
    """One line: where in the file YAML gave up (1-based line and column, as editors count) and why."""
    mark = getattr(error, "problem_mark", None)
    where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = " ".join(str(getattr(error, "problem", None) or error).split()).replace("'\\t'", "a tab")
    context, start = getattr(error, "context", None), getattr(error, "context_mark", None)
    if context and start:
        context += f" that starts at line {start.line + 1}, column {start.column + 1}"
    return (f"config file {path}{where}: {problem}" + (f" ({context})" if context else "")
            + "; fix the YAML there (indent with spaces, close every [ and {)")


def _apply_override(data: dict[str, Any], override: str) -> None:
    key, sep, raw_value = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} is not of the form section.key=value, e.g. validation.atol=1e-5")
    *sections, leaf = key.strip().split(".")
    node = data
    for section in sections:
        node = node.setdefault(section, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {section!r} is not a section")
    node[leaf] = _parse_value(raw_value)


def _parse_value(raw_value: str) -> Any:
    """YAML scalars and lists (1e-5, true, [1, 8]); anything YAML can't read stays the plain string."""
    try:
        return yaml.safe_load(raw_value)
    except yaml.YAMLError:
        return raw_value
