"""The sweep: convert every swept registry version that has no ONNX twin yet — what a lost webhook missed.

Each version becomes its own flow run of the `convert` deployment, so the conversions spread over the work pool's
workers; the deployment's concurrency limit (`sweep.max_concurrency`, set by deployments/deploy.py) bounds how many
run at once. Needs a Prefect server with the deployments (`make stack-up`).
"""
from __future__ import annotations

from prefect import flow
from pydantic import Field

from onnx_stage.config import StageConfig, load_config
from onnx_stage.tracking import configure_tracking
from onnx_stage.tasks.sweep import find_unconverted, report_outcomes, start_conversion, wait_for_conversions


@flow(name="sweep-unconverted-versions", log_prints=True)
def sweep(
    config: StageConfig = Field(default_factory=load_config,
                                description="Stage settings (configs/default.yaml); the sweep section picks the models."),
) -> list[str]:
    configure_tracking()
    refs = find_unconverted(config.sweep)
    run_ids = [start_conversion(ref, config) for ref in refs]
    # each run converts one version; runs beyond the concurrency limit wait their turn
    waves = -(-len(refs) // config.sweep.max_concurrency)
    states = wait_for_conversions(run_ids, timeout_seconds=(waves + 1) * config.convert.timeout_seconds)
    return report_outcomes(refs, states)


if __name__ == "__main__":
    sweep()
