"""The bad-input corpus: each case runs the real `onnx-stage convert` (a subprocess) against the session's real
`mlflow server` and Prefect server, and must end with exit code 1, exactly one stderr line
`onnx-stage: error: ...` naming the thing and the fix, no traceback, and the registry exactly as it was.

The cases are independent processes, so they run a few at a time (CONCURRENCY), once per session; each test then
judges one case's outcome."""
from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import ONNX_STAGE, cli_env, registry_snapshot

CONCURRENCY = 3
MODEL = "corpus-mlp"  # registered below: v1 a good model (alias champion), v2 no model, v3 pyfunc only, v4 NaN weights

BUILD_MODELS = '''
import sys, keras, numpy as np
out = sys.argv[1]

def mlp(name):
    inputs = keras.Input((16,), name="features")
    x = keras.layers.Dense(64, activation="tanh", name="dense_1")(inputs)
    x = keras.layers.Dense(64, activation="tanh", name="dense_2")(x)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="dense_3")(x), name=name)

mlp("tiny").save(f"{out}/tiny.keras")
for label, value in (("nan", np.nan), ("inf", np.inf), ("neginf", -np.inf)):
    model = mlp(label)
    kernel, bias = model.get_layer("dense_3").get_weights()
    kernel[1, 2] = value
    model.get_layer("dense_3").set_weights([kernel, bias])
    model.save(f"{out}/{label}_weights.keras")
inputs = keras.Input((16,), name="features")
keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2.0, name="doubler")(inputs)).save(f"{out}/lambda.keras")


@keras.saving.register_keras_serializable(package="corpus")
class Scale(keras.layers.Layer):
    def call(self, x):
        return x * 3.0


inputs = keras.Input((16,), name="features")
keras.Model(inputs, Scale(name="scale")(inputs)).save(f"{out}/custom.keras")
text = keras.Input((1,), dtype="string", name="review")
tokens = keras.layers.TextVectorization(output_sequence_length=5, vocabulary=["good", "bad", "film"],
                                        name="vectorize")(text)
x = keras.layers.GlobalAveragePooling1D(name="pool")(keras.layers.Embedding(6, 4, name="embed")(tokens))
keras.Model(text, keras.layers.Dense(2, name="logits")(x)).save(f"{out}/string_input.keras")
'''


@pytest.fixture(scope="session")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The corpus' model files, built once: Keras models (one child Python) and broken archives (plain bytes)."""
    out = tmp_path_factory.mktemp("bad-inputs")
    subprocess.run([sys.executable, "-c", BUILD_MODELS, str(out)], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    good = (out / "tiny.keras").read_bytes()
    noise = random.Random(0).randbytes(4096)
    (out / "random_bytes.keras").write_bytes(noise)
    (out / "empty.keras").write_bytes(b"")
    (out / "truncated.keras").write_bytes(good[: len(good) // 2])
    (out / "text.keras").write_text("model: tiny\nlayers: [dense_1, dense_2]\n")
    with zipfile.ZipFile(out / "tiny.keras") as source, \
            zipfile.ZipFile(out / "cut_config.keras", "w") as cut, zipfile.ZipFile(out / "no_config.keras", "w") as bare:
        for item in source.infolist():
            data = source.read(item)
            cut.writestr(item, data[: len(data) // 2] if item.filename == "config.json" else data)
            if item.filename != "config.json":
                bare.writestr(item, data)
    (out / "random_bytes.h5").write_bytes(noise)
    (out / "two_models").mkdir()
    for name in ("a.keras", "b.keras"):
        (out / "two_models" / name).write_bytes(good)
    (out / "no_model").mkdir()
    (out / "no_model" / "notes.txt").write_text("nothing to convert here\n")
    (out / "list.yaml").write_text("- validation\n- benchmark\n")
    (out / "unclosed.yaml").write_text("validation:\n  atol: 1.0e-4\n  batch_sizes: [1, 16\n"
                                       "benchmark:\n  enabled: true\n")
    (out / "tabs.yaml").write_text("validation:\n\tatol: 1.0e-4\n")
    return out


@pytest.fixture(scope="session")
def corpus_registry(stage: str, bad_files: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """corpus-mlp: v1 the good model (alias champion), v2 a folder with no model, v3 a pyfunc-only MLflow model,
    v4 a model with NaN weights; corpus-empty: a registered model without versions. Plain artifacts: no Keras here."""
    import mlflow
    from mlflow import MlflowClient

    from onnx_stage.tracking import use_experiment

    scratch = tmp_path_factory.mktemp("corpus-versions")
    folders = {"good": {"model.keras": (bad_files / "tiny.keras").read_bytes()},
               "no_model": {"notes.txt": b"a README, not a model\n"},
               "pyfunc_only": {"MLmodel": b"flavors:\n  python_function:\n    loader_module: corpus_loader\n"
                                          b"    python_version: 3.11.0\n", "corpus_loader.py": b"x = 1\n"},
               "nan": {"model.keras": (bad_files / "nan_weights.keras").read_bytes()}}
    client = MlflowClient()
    use_experiment("bad-inputs-corpus")
    client.create_registered_model(MODEL)
    client.create_registered_model("corpus-empty")
    for label, files in folders.items():
        folder = scratch / label
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data)
        with mlflow.start_run(run_name=f"corpus {label}") as run:
            mlflow.log_artifacts(str(folder), artifact_path="model")
        version = client.create_model_version(MODEL, f"runs:/{run.info.run_id}/model", run.info.run_id).version
        if label == "good":
            client.set_registered_model_alias(MODEL, "champion", version)
            good_run = run.info.run_id
    return good_run


@dataclass(frozen=True)
class Case:
    id: str
    args: list[str]
    expect: list[str]  # regexes the error line must match: the thing named, the fix
    env: dict[str, str] | None = None
    max_seconds: float | None = None


F = "{files}"  # replaced by the bad_files folder
CASES = [
    # the registry reference
    Case("missing-model", ["--model", "no-such-model"],
         [r"registered model 'no-such-model' not found", rf"registered models there: .*{MODEL}"]),
    Case("missing-version", ["--model", MODEL, "--version", "99"], [r"has no version 99; its versions: 1, 2, 3, 4"]),
    Case("non-numeric-version", ["--model", MODEL, "--version", "latest"], [r"has no version latest; its versions"]),
    Case("missing-alias", ["--model", MODEL, "--alias", "nope"], [r"has no alias 'nope'; its aliases: champion→v1"]),
    Case("model-without-versions", ["--model", "corpus-empty"], [r"'corpus-empty' has no versions yet; register one"]),
    Case("name-with-single-quote", ["--model", "o'brien-mlp"], [r"registered model \"o'brien-mlp\" not found"]),
    Case("name-with-double-quote", ["--model", 'say "hi"'], [r"registered model 'say \"hi\"' not found"]),
    Case("version-that-is-not-a-model", ["--model", MODEL, "--version", "2"],
         [r"no supported model in .*; supported sources: keras"]),
    Case("pyfunc-only-version", ["--model", MODEL, "--version", "3"],
         [r"no supported model in .*its MLflow flavors: python_function.*; supported sources"]),
    Case("nan-weights-version", ["--model", MODEL, "--version", "4"], [r"layer dense_3 has NaN weights", r"re-?save"]),
    # files
    Case("nan-weights", ["--model", "corpus", "--path", f"{F}/nan_weights.keras"], [r"layer dense_3 has NaN weights"]),
    Case("inf-weights", ["--model", "corpus", "--path", f"{F}/inf_weights.keras"],
         [r"layer dense_3 has \+inf weights \(kernel: 1 of 640 values\)"]),
    Case("negative-inf-weights", ["--model", "corpus", "--path", f"{F}/neginf_weights.keras"],
         [r"layer dense_3 has -inf weights", r"re-save the model"]),
    Case("lambda-layer", ["--model", "corpus", "--path", f"{F}/lambda.keras"], [r"Lambda", r"safe_mode"]),
    Case("unregistered-custom-layer", ["--model", "corpus", "--path", f"{F}/custom.keras"],
         [r"class 'Scale' is not registered with Keras", r"convert\.custom_object_modules"]),
    Case("missing-custom-module", ["--model", "corpus", "--path", f"{F}/tiny.keras",
                                   "--set", "convert.custom_object_modules=[no_such_corpus_module]"],
         [r"'no_such_corpus_module' cannot be imported", r"convert\.custom_object_modules"]),
    Case("random-bytes", ["--model", "corpus", "--path", f"{F}/random_bytes.keras"],
         [r"random_bytes\.keras is not a Keras archive \(not a zip", r"re-save it with model\.save\(\)"]),
    Case("empty-file", ["--model", "corpus", "--path", f"{F}/empty.keras"],
         [r"empty\.keras is not a Keras archive \(empty file", r"re-save it with model\.save\(\)"]),
    Case("truncated-zip", ["--model", "corpus", "--path", f"{F}/truncated.keras"],
         [r"truncated\.keras is not a Keras archive \(truncated", r"re-save it with model\.save\(\)"]),
    Case("text-named-keras", ["--model", "corpus", "--path", f"{F}/text.keras"],
         [r"text\.keras is not a Keras archive \(not a zip.*text", r"re-save it with model\.save\(\)"]),
    Case("cut-config-json", ["--model", "corpus", "--path", f"{F}/cut_config.keras"],
         [r"cut_config\.keras is not a Keras archive \(config\.json", r"re-save it with model\.save\(\)"]),
    Case("zip-without-config", ["--model", "corpus", "--path", f"{F}/no_config.keras"],
         [r"no_config\.keras is not a Keras archive \(no config\.json", r"re-save it with model\.save\(\)"]),
    Case("random-bytes-h5", ["--model", "corpus", "--path", f"{F}/random_bytes.h5"],
         [r"random_bytes\.h5 is not an HDF5 file", r"re-save it with model\.save\(\)"]),
    Case("string-input", ["--model", "corpus", "--path", f"{F}/string_input.keras"],
         [r"input 'review' takes strings", r"token ids"]),
    Case("several-models", ["--model", "corpus", "--path", f"{F}/two_models"],
         [r"several models in .*two_models: a\.keras, b\.keras; point the stage at one of them"]),
    Case("folder-without-model", ["--model", "corpus", "--path", f"{F}/no_model"],
         [r"no supported model in .*no_model; supported sources"]),
    Case("missing-file", ["--model", "corpus", "--path", "/no/such/model.keras"], [r"cannot fetch /no/such/model\.keras"]),
    Case("bad-runs-uri", ["--model", "corpus", "--path", "runs:/0123456789abcdef0123456789abcdef/model.keras"],
         [r"cannot fetch runs:/0123456789abcdef0123456789abcdef/model\.keras"]),
    Case("missing-artifact-in-real-run", ["--model", "corpus", "--path", "runs:/{run}/model/missing.keras"],
         [r"cannot fetch runs:/\w+/model/missing\.keras"]),
    Case("missing-sample-data", ["--model", MODEL, "--alias", "champion", "--set", "validation.sample_data=/no/such.npz"],
         [r"/no/such\.npz", r"sample_data"]),
    Case("impossible-tolerance", ["--model", MODEL, "--alias", "champion", "--set", "validation.atol=0",
                                  "--set", "validation.rtol=0", "--set", "benchmark.enabled=false"],
         [r"beyond tolerance, nothing registered: .*max\|Δ\|=", r"atol=0, rtol=0"]),
    Case("one-second-timeout", ["--model", MODEL, "--alias", "champion", "--set", "convert.timeout_seconds=1"],
         [r"took longer than 1 s and was killed; raise convert\.timeout_seconds"]),
    Case("unreachable-tracking-server", ["--model", MODEL], [r"cannot reach MLflow at http://127\.0\.0\.1:9\b",
                                                              r"MLFLOW_TRACKING_URI"],
         env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}, max_seconds=60),
    # the configuration
    Case("zero-batch-size", ["--model", MODEL, "--set", "validation.batch_sizes=[0]"],
         [r"validation\.batch_sizes\.0: Input should be greater than or equal to 1"]),
    Case("negative-benchmark-batch", ["--model", MODEL, "--set", "benchmark.batch_sizes=[1,-8]"],
         [r"benchmark\.batch_sizes\.1: Input should be greater than or equal to 1"]),
    Case("zero-sequence-length", ["--model", MODEL, "--set", "validation.sequence_lengths=[0]"],
         [r"validation\.sequence_lengths\.0: Input should be greater than or equal to 1"]),
    Case("no-batch-sizes", ["--model", MODEL, "--set", "validation.batch_sizes=[]"],
         [r"validation\.batch_sizes: List should have at least 1 item"]),
    Case("zero-sample-rows", ["--model", MODEL, "--set", "validation.sample_rows=0"],
         [r"validation\.sample_rows: Input should be greater than or equal to 1"]),
    Case("negative-seed", ["--model", MODEL, "--set", "validation.seed=-1"],
         [r"validation\.seed: Input should be greater than or equal to 0"]),
    Case("zero-timeout", ["--model", MODEL, "--set", "convert.timeout_seconds=0"],
         [r"convert\.timeout_seconds: Input should be greater than 0"]),
    Case("too-few-timed-runs", ["--model", MODEL, "--set", "benchmark.timed_runs=1"],
         [r"benchmark\.timed_runs: Input should be greater than or equal to 5"]),
    Case("zero-calibration-rows", ["--model", MODEL, "--set", "variants=[{kind: int8_static, atol: 0.1, rtol: 0.1, "
                                                               "calibration_rows: 0}]"],
         [r"variants\.0\.calibration_rows: Input should be greater than or equal to 1"]),
    Case("unknown-section", ["--model", MODEL, "--set", "nosuch.key=1"], [r"nosuch: Extra inputs are not permitted"]),
    Case("unknown-key", ["--model", MODEL, "--set", "validation.atoll=1e-4"],
         [r"validation\.atoll: Extra inputs are not permitted"]),
    Case("wrong-type", ["--model", MODEL, "--set", "validation.atol=tiny"],
         [r"validation\.atol: Input should be a valid number"]),
    Case("negative-tolerance", ["--model", MODEL, "--set", "validation.atol=-1"],
         [r"validation\.atol: Input should be greater than or equal to 0"]),
    Case("impossible-argmax-agreement", ["--model", MODEL, "--set", "validation.min_argmax_agreement=1.5"],
         [r"validation\.min_argmax_agreement: Input should be less than or equal to 1"]),
    Case("unknown-route", ["--model", MODEL, "--set", "convert.routes=[nope]"],
         [r"convert\.routes\.0: Input should be 'tf2onnx_lean', 'onnxmltools', 'keras_export' or 'tf2onnx'"]),
    Case("opset-out-of-range", ["--model", MODEL, "--set", "convert.opset=99"],
         [r"convert\.opset: Input should be less than or equal to 21"]),
    Case("unknown-variant-kind", ["--model", MODEL, "--set", "variants=[{kind: int4, atol: 0.1, rtol: 0.1}]"],
         [r"variants\.0\.kind: Input should be 'fp16', 'int8_dynamic' or 'int8_static'"]),
    Case("tolerance-missing-rtol", ["--model", MODEL, "--set", "validation.per_output={dense_3: {atol: 0.1}}"],
         [r"validation\.per_output\.dense_3\.rtol: Field required"]),
    Case("name-template-without-name", ["--model", MODEL, "--set", "registry.name_template=twins"],
         [r"registry\.name_template: String should match pattern"]),
    Case("bad-cron", ["--model", MODEL, "--set", "sweep.cron=hourly"], [r"'hourly' is not a 5-field cron expression"]),
    Case("override-without-equals", ["--model", MODEL, "--set", "validation.atol"],
         [r"override 'validation\.atol' is not of the form section\.key=value"]),
    Case("override-into-a-value", ["--model", MODEL, "--set", "validation.atol.x=1"],
         [r"override 'validation\.atol\.x=1': 'atol' is not a section"]),
    Case("missing-config-file", ["--model", MODEL, "--config", "/no/such/config.yaml"],
         [r"config file /no/such/config\.yaml does not exist; pass --config with an existing YAML file"]),
    Case("config-not-a-mapping", ["--model", MODEL, "--config", f"{F}/list.yaml"],
         [r"list\.yaml must hold a mapping of sections, not list"]),
    Case("malformed-yaml", ["--model", MODEL, "--config", f"{F}/unclosed.yaml"],
         [r"unclosed\.yaml, line \d+, column \d+: .*(flow sequence|','|']')", r"fix the YAML"]),
    Case("tab-indented-yaml", ["--model", MODEL, "--config", f"{F}/tabs.yaml"],
         [r"tabs\.yaml, line 2, column 1: .*tab", r"fix the YAML"]),
]


@dataclass(frozen=True)
class Outcome:
    completed: subprocess.CompletedProcess
    seconds: float
    before: dict[str, Any]
    after: dict[str, Any]


def run_case(case: Case, env: dict[str, str], files: Path, run_id: str) -> Outcome:
    args = [arg.replace(F, str(files)).replace("{run}", run_id) for arg in case.args]
    before = registry_snapshot()
    started = time.monotonic()
    completed = subprocess.run([ONNX_STAGE, "convert", *args], env={**env, **(case.env or {})}, capture_output=True,
                               text=True, timeout=300, cwd=tempfile.gettempdir())
    return Outcome(completed, time.monotonic() - started, before, registry_snapshot())


@pytest.fixture(scope="session")
def outcomes(stage: str, bad_files: Path, corpus_registry: str) -> dict[str, Outcome]:
    """Every case, run once; with the registry snapshots around the whole corpus under the key "*"."""
    env = cli_env(stage)
    before = registry_snapshot()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        results = dict(zip([case.id for case in CASES],
                           pool.map(lambda case: run_case(case, env, bad_files, corpus_registry), CASES)))
    results["*"] = Outcome(subprocess.CompletedProcess([], 0), 0.0, before, registry_snapshot())
    return results


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_fails_with_one_clear_line_and_leaves_the_registry_alone(
        case: Case, outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes[case.id]
    completed = outcome.completed
    lines = completed.stderr.strip().splitlines()
    assert completed.returncode == 1, (completed.returncode, completed.stderr[-3000:], completed.stdout[-3000:])
    assert len(lines) == 1 and lines[0].startswith("onnx-stage: error: "), completed.stderr[-3000:]
    for pattern in case.expect:
        assert re.search(pattern, lines[0]), f"{pattern!r} not in: {lines[0]}"
    assert "Traceback" not in completed.stdout + completed.stderr
    assert outcome.after == outcome.before  # cases run side by side: any change fails every case it overlaps
    if case.max_seconds:
        assert outcome.seconds < case.max_seconds, f"took {outcome.seconds:.0f} s"


def test_the_corpus_is_big_enough_and_left_the_registry_as_it_was(outcomes: dict[str, Outcome]) -> None:
    assert len(CASES) >= 40 and len({case.id for case in CASES}) == len(CASES)
    assert outcomes["*"].after == outcomes["*"].before
