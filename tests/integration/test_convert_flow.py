"""The conversion flow end to end, against a real mlflow server and real Prefect."""
from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from onnx_stage.flows.convert_flow import convert_model
from onnx_stage.flows.cli import main as cli_main
from onnx_stage.config import load_config
from onnx_stage.errors import StageError

FAST = ["benchmark.timed_runs=10", "benchmark.warmup_runs=2", "benchmark.min_seconds=0",
        "benchmark.screening_runs=3"]


def versions_of(name: str) -> list:
    client = MlflowClient()
    if not client.search_registered_models(filter_string=f"name='{name}'"):
        return []
    return client.search_model_versions(f"name='{name}'")


def test_registry_version_becomes_a_loadable_onnx_twin(digits_model: str, tmp_path: Path) -> None:
    twin = convert_model(model_name="digits-mlp", alias="champion",
                         config=load_config(overrides=[*FAST, "benchmark.raw_samples=true"]))

    assert twin.created and twin.name == "digits-mlp-onnx"
    client = MlflowClient()
    version = client.get_model_version(twin.name, twin.version)
    tags = version.tags
    assert tags["onnx_stage.twin_of"] == f"digits-mlp/{digits_model}"
    assert tags["onnx_stage.converter_route"] == load_config().convert.routes[0]  # a plain MLP: the first route wins
    assert tags["onnx_stage.opset"] == "17"
    # the steps kept depend on this run's timing: "none" or e.g. "neutral_elementwise(1),shape_simplification(2)"
    steps = "|".join(load_config().convert.graph_optimizations)
    assert re.fullmatch(rf"none|({steps})\(\d+\)(,({steps})\(\d+\))*", tags["onnx_stage.graph_optimizations"])
    assert len(tags["onnx_stage.source_sha256"]) == 64
    assert float(tags["onnx_stage.parity_max_abs"]) < 1e-4
    assert float(tags["onnx_stage.speedup_vs_keras_b1"]) > 0
    assert "tf2onnx" in json.loads(tags["onnx_stage.converter_versions"])
    source = client.get_model_version("digits-mlp", digits_model)
    assert source.tags["onnx_stage.onnx_twin"] == twin.uri
    assert client.get_model_version_by_alias(twin.name, "champion").version == twin.version

    files = Path(mlflow.artifacts.download_artifacts(twin.uri, dst_path=str(tmp_path)))
    rendering = json.loads((files / "extra_files" / "model.json").read_text())
    assert rendering["graph"]["node"] and rendering["opsetImport"]
    assert "graph {" in (files / "extra_files" / "model.onnx.txt").read_text()
    validation = json.loads((files / "extra_files" / "validation.json").read_text())
    assert validation["passed"] and {c["batch_size"] for c in validation["cases"]} >= {1, 16}
    bench = json.loads((files / "extra_files" / "benchmark.json").read_text())
    assert bench["rows"] and all("samples_ms" not in row and sum(row["histogram_ms"]["counts"]) == row["runs"]
                                 for row in bench["rows"])  # what a consumer downloads stays small
    samples = mlflow.artifacts.load_dict(f"runs:/{twin.run_id}/benchmark_samples.json")  # asked for: on the run
    assert len(samples["keras batch 1"]) == next(r["runs"] for r in bench["rows"] if r["runtime"] == "keras")
    flavor = mlflow.models.Model.load(twin.uri).flavors["onnx"]  # packaged before validation, completed after
    assert {f["path"] for f in flavor["extra_files"]} >= {f"extra_files/{name}" for name in (
        "model.json", "model.onnx.txt", "validation.json", "benchmark.json", "latency.png")}
    assert flavor["onnx_session_options"] == (bench["session_options"] or None)
    metrics = client.get_run(twin.run_id).data.metrics
    assert metrics["latency.keras.batch1.p50_ms"] > 0 and metrics["latency.onnxruntime_default.batch32.p50_ms"] > 0
    assert (files / "extra_files" / "latency.png").read_bytes().startswith(b"\x89PNG")

    # a registry consumer: pyfunc by alias, on the version's own input example
    consumer = mlflow.pyfunc.load_model(f"models:/{twin.name}@champion")
    example = mlflow.models.Model.load(twin.uri).load_input_example(str(files))
    probabilities = consumer.predict(example)  # an ndarray, as the Keras source's pyfunc answers
    assert isinstance(probabilities, np.ndarray) and probabilities.shape[1] == 10
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)



def test_a_conversion_leaves_nothing_in_the_temporary_directory(digits_model: str, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Every download (the version, the sample data, the consumer check's copy of the twin) and the Keras child's
    own files (TensorFlow's autograph sources) go when the run ends: a worker converting 2 GB models must not fill
    its disk."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    samples = tmp_path / "samples.npz"
    np.savez(samples, np.random.default_rng(0).random((8, 64), dtype=np.float32))
    with mlflow.start_run(run_name="sample data") as run:
        mlflow.log_artifact(str(samples))
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))

    twin = convert_model(model_name="digits-mlp", alias="champion", config=load_config(overrides=[
        *FAST, "registry.name_template={name}-tidy-onnx", f"validation.sample_data=runs:/{run.info.run_id}/samples.npz"]))

    assert twin.created
    deadline = time.monotonic() + 30  # the Keras child is reaped on a thread while the flow registers
    while (left := sorted(str(p.relative_to(temp)) for p in temp.rglob("*"))) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == []

def test_rerun_returns_the_existing_twin_and_creates_nothing(digits_model: str) -> None:
    config = load_config(overrides=FAST)
    first = convert_model(model_name="digits-mlp", version=digits_model, config=config)
    count = len(versions_of("digits-mlp-onnx"))
    again = convert_model(model_name="digits-mlp", version=digits_model, config=config)
    assert not again.created and again.version == first.version
    assert len(versions_of("digits-mlp-onnx")) == count


def test_legacy_h5_file_from_local_path_and_from_run_artifact(digits_model: str, tmp_path: Path) -> None:
    run_id = MlflowClient().get_model_version("digits-mlp", digits_model).run_id
    h5_uri = f"runs:/{run_id}/legacy/digits_mlp.h5"
    config = load_config(overrides=[*FAST, "benchmark.enabled=false"])

    from_artifact = convert_model(model_name="article-mlp", path=h5_uri, config=config)
    local_file = Path(mlflow.artifacts.download_artifacts(h5_uri, dst_path=str(tmp_path)))
    from_local = convert_model(model_name="article-mlp-local", path=str(local_file), config=config)

    for twin in (from_artifact, from_local):
        assert twin.created
        assert MlflowClient().get_model_version(twin.name, twin.version).tags["onnx_stage.twin_of"].endswith(".h5")
        assert mlflow.pyfunc.load_model(twin.uri).metadata.flavors["onnx"]


def test_failed_parity_registers_nothing(digits_model: str) -> None:
    impossible = load_config(overrides=[*FAST, "validation.atol=0", "validation.rtol=0",
                                        "registry.name_template={name}-strict-onnx"])
    with pytest.raises(StageError, match=r"beyond tolerance, nothing registered: .*max\|Δ\|="):
        convert_model(model_name="digits-mlp", alias="champion", config=impossible)
    assert versions_of("digits-mlp-strict-onnx") == []


@pytest.mark.parametrize(("selector", "message"), [
    (["--model", "no-such-model"], "registered model 'no-such-model' not found at .* registered models there: .*digits-mlp"),
    (["--model", "digits-mlp", "--version", "99"], "model 'digits-mlp' has no version 99; its versions: 1"),
    (["--model", "digits-mlp", "--alias", "nope"], "model 'digits-mlp' has no alias 'nope'; its aliases: champion→v1"),
    (["--model", "digits-mlp", "--path", "/no/such/model.h5"], "cannot fetch /no/such/model.h5"),
    (["--model", "digits-mlp", "--set", "validation.atol=-1"], "invalid configuration.*validation.atol"),
])
def test_bad_references_fail_with_one_clear_line(digits_model: str, capsys: pytest.CaptureFixture,
                                                 selector: list[str], message: str) -> None:
    assert cli_main(["convert", *selector]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("onnx-stage: error: ")
    assert __import__("re").search(message, error), error
    assert "Traceback" not in capsys.readouterr().err


def test_variant_failing_its_gate_is_refused_and_a_passing_one_registered(digits_model: str) -> None:
    config = load_config(overrides=[
        *FAST, "benchmark.enabled=false", "registry.name_template={name}-variants-onnx",
        "variants=[{kind: int8_dynamic, atol: 0, rtol: 0}, {kind: fp16, atol: 1.0e-2, rtol: 1.0e-2}]"])
    twin = convert_model(model_name="digits-mlp", alias="champion", config=config)

    by_variant = {v.tags["onnx_stage.variant"]: v for v in versions_of(twin.name)}
    assert set(by_variant) == {"fp32", "fp16"}  # nothing of the int8 variant was registered
    client = MlflowClient()
    assert client.get_model_version_by_alias(twin.name, "champion-fp16").version == by_variant["fp16"].version
    assert client.get_model_version_by_alias(twin.name, "champion").version == twin.version
    fp16 = mlflow.onnx.load_model(f"models:/{twin.name}/{by_variant['fp16'].version}")
    assert any(init.data_type == 10 for init in fp16.graph.initializer)  # FLOAT16 weights
