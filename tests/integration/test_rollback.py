"""A registration that fails after the version exists leaves no version behind (Prefect transaction rollback)."""
from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient
from prefect import flow, task
from prefect.transactions import transaction

from onnx_stage.config import load_config
from onnx_stage.keras_worker import KerasWorker
from onnx_stage.tasks.benchmark import benchmark
from onnx_stage.tasks.convert import convert_source
from onnx_stage.tasks.load import load_source
from onnx_stage.records import ModelRef, RegisteredTwin
from onnx_stage.tasks.register import input_example, package, register
from onnx_stage.tasks.validate import source_outputs, validate, validation_cases


class ConsumerCheckFailed(RuntimeError):
    pass


@task
def failing_check(twin: RegisteredTwin) -> None:
    assert MlflowClient().get_model_version(twin.name, twin.version)  # the version really existed
    raise ConsumerCheckFailed(twin.uri)


@flow
def register_then_fail(work_dir: Path) -> None:
    config = load_config(overrides=["benchmark.enabled=false", "registry.name_template={name}-rollback-onnx"])
    with KerasWorker(config.convert.timeout_seconds) as worker:
        source = load_source(ModelRef(name="digits-mlp", alias="champion"), worker, work_dir)
        onnx_model = convert_source(source, worker, config.convert, work_dir / "onnx")
        inputs = validation_cases(source, worker, config.validation, work_dir)
        expected = source_outputs(inputs, worker, work_dir)
        parity = validate(source, onnx_model, inputs, expected, worker, config.validation, work_dir)
        bench = benchmark(source, onnx_model, worker, config.benchmark, [])
    with transaction():
        example_dir = input_example(source, inputs, work_dir)
        twin = register(source, package(source, onnx_model, example_dir, work_dir), onnx_model, parity, bench, config,
                        work_dir)
        failing_check(twin)


def test_failure_after_registration_deletes_the_version(digits_model: str, tmp_path: Path) -> None:
    with pytest.raises(ConsumerCheckFailed):
        register_then_fail(tmp_path)
    assert MlflowClient().search_model_versions("name='digits-mlp-rollback-onnx'") == []
