"""The sweep: convert every swept registry version that has no ONNX twin yet — what a lost webhook missed."""
from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from flows.convert_flow import convert_model
from onnx_stage.config import StageConfig, load_config
from onnx_stage.tracking import configure_tracking
from tasks.records import ModelRef, RegisteredTwin
from tasks.sweep import find_unconverted, report_outcomes


@task(name="convert-version", cache_policy=NO_CACHE, task_run_name="convert {ref.name}/{ref.version}")
def convert_version(ref: ModelRef, config: StageConfig) -> RegisteredTwin:
    return convert_model(model_name=ref.name, version=ref.version, config=config)


@flow(name="sweep-unconverted-versions", log_prints=True)
def sweep(
    config: StageConfig = Field(default_factory=load_config,
                                description="Stage settings (configs/default.yaml); the sweep section picks the models."),
) -> list[RegisteredTwin]:
    configure_tracking()
    refs = find_unconverted(config.sweep)
    with ThreadPoolTaskRunner(max_workers=config.sweep.max_concurrency) as runner:
        futures = [runner.submit(convert_version, {"ref": ref, "config": config}) for ref in refs]
        wait(futures)
    return report_outcomes(refs, [future.state for future in futures])


if __name__ == "__main__":
    sweep()
