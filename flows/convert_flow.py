"""The conversion flow: load → convert → validate → benchmark → register (+ consumer check), nothing else."""
from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.transactions import transaction
from pydantic import Field

from onnx_stage.config import StageConfig, load_config
from onnx_stage.keras_worker import KerasWorker
from onnx_stage.lease import conversion_lease
from onnx_stage.memory import bounded_heap
from onnx_stage.scratch import scratch_directory
from onnx_stage.summary import run_summary
from onnx_stage.tracking import configure_tracking
from onnx_stage.tasks.benchmark import benchmark, gate_variant_speed
from onnx_stage.tasks.convert import convert, optimize
from onnx_stage.tasks.load import fetch, load
from onnx_stage.records import ModelRef, RegisteredTwin
from onnx_stage.tasks.register import (conversion_key, find_twin, input_example, package, publish, register,
                                       warm_up_packaging)
from onnx_stage.tasks.validate import (check_consumer, check_served_options, source_outputs,
                                       source_pyfunc_answers, validate, validate_variants, validation_cases)


@task(name="summarise", cache_policy=NO_CACHE)
def summarise(*records: object) -> str:
    markdown = run_summary(*records)
    create_markdown_artifact(markdown, key="onnx-conversion", description="Keras → ONNX conversion summary")
    return markdown


@flow(name="convert-keras-to-onnx", log_prints=True)
def convert_model(
    model_name: str = Field(..., description="Registered Keras model to convert, e.g. digits-mlp."),
    version: str | None = Field(None, description="Version number to convert. Leave empty to use the alias."),
    alias: str | None = Field(None, description="Version alias to convert, e.g. champion. Empty + no version = latest."),
    path: str | None = Field(None, description="Convert this .h5/.keras file (local path or MLflow artifact URI) "
                                               "instead of a registry version; registered as {model_name}-onnx."),
    config: StageConfig = Field(load_config(), description="Stage settings (configs/default.yaml)."),
) -> RegisteredTwin:
    configure_tracking()
    ref = ModelRef(name=model_name, version=version, alias=alias, path=path)
    with scratch_directory("run") as work_dir, \
            KerasWorker.open(config.convert.timeout_seconds) as worker, \
            bounded_heap():  # fewer malloc arenas, free pages returned: for a worker running flow after flow
        warmed = warm_up_packaging.submit()  # runs while the child imports TensorFlow
        fetched = fetch(ref, work_dir)
        with conversion_lease(conversion_key(fetched, config), config.registry.lease_wait_seconds,
                              config.registry.lease_seconds):  # one run per model file and settings at a time
            if existing := find_twin(fetched, config):  # answered before the child has imported TensorFlow
                warmed.wait()
                print(f"{fetched.ref.describe()} already has an identical ONNX twin: {existing.uri}")
                publish(fetched, existing, config)  # a new version with the same file still gets its tag and aliases
                return existing
            source = load(fetched, worker, work_dir, config.convert.custom_object_modules)
            converting = convert.submit(source, worker, config.convert, work_dir / "onnx")
            try:
                inputs = validation_cases(source, worker, config.validation, work_dir)  # while the child converts
            except BaseException:
                worker.close()  # stops the conversion before the scratch directory goes
                converting.wait()
                raise
            example = input_example.submit(source, inputs, work_dir)  # MLflow's JSON of it, while the child converts
            predicting = source_outputs.submit(inputs, worker, work_dir)  # the child predicts once it has converted
            answering = source_pyfunc_answers.submit(source, inputs, worker, wait_for=[converting])
            try:
                onnx_model = optimize(source, converting.result(), worker, config.convert, inputs)
            finally:
                predicting.wait()  # they write into the scratch directory a failure removes
                example.wait()
            # local files only, registered after validation
            packaged = package.submit(source, onnx_model, example, work_dir, wait_for=[warmed])
            try:
                parity = validate(source, onnx_model, inputs, predicting.result(), worker, config.validation, work_dir)
            finally:
                packaged.wait()
            variants = validate_variants(source, onnx_model, worker, config, work_dir, inputs, parity.keras_outputs)
            accepted = [variant for variant in variants if variant.parity]
            source_answers = answering.result()  # before the benchmark: the child must time Keras undisturbed
            bench = benchmark(source, onnx_model, worker, config.benchmark, accepted)
            bench = check_served_options(onnx_model, inputs, parity, bench, config.validation)
            variants = gate_variant_speed(variants, bench, config.variants)
            accepted = [variant for variant in variants if variant.parity]
            worker.close(wait=False)  # its memory is freed while the twin registers
            with transaction():
                twin = register(source, packaged, onnx_model, parity, bench, config, work_dir,
                                source_answers=source_answers)
                consumer_forms = check_consumer(twin, parity, source, inputs, source_answers, work_dir)
                variant_twins = []
                for variant in accepted:
                    variant_dir = work_dir / variant.kind
                    variant_package = package(source, variant.onnx_model, example.result(), variant_dir, variant.kind)
                    variant_twins.append(register(source, variant_package, variant.onnx_model, variant.parity, bench,
                                                  config, variant_dir, variant.kind, source_answers))
                    check_consumer(variant_twins[-1], variant.parity, source, inputs, source_answers, work_dir)
                for registered in (*variant_twins, twin):  # the fp32 twin completes last
                    publish(source, registered, config)
        print(summarise(source, onnx_model, parity, bench, twin, variants, variant_twins, consumer_forms))
        return twin
