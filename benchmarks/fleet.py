"""Fleet: the production stack converting many versions at once, and what the orchestration costs one version.

    .venv/bin/python benchmarks/fleet.py [--versions 8] [--quick]

Starts its own production stack (deployments/production.py) on free ports in a temporary directory, then:
1. N Keras versions (digits-mlp, a different seed each, logged first) registered at once (N threads), converted by
   the stack's webhook → Prefect → workers path with 1 worker, then N more with 2 workers: seconds from the first
   registration until every twin is complete, and the ratio 1 worker / 2 workers;
2. one version registered alone (2 workers, idle stack): seconds from registration to its complete twin, against a
   bare conversion of the same file (the stage's load + convert in a fresh Keras child, no registry, no Prefect):
   `time-to-twin ratio: X`.
--quick turns the benchmark task off in the deployments' conversions (validation and registration stay).
Each worker runs at most 2 flow runs at once (production.WORKER_FLOW_RUN_LIMIT).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_common import load_and_convert, machine_line  # noqa: E402
from deployments.production import ProductionStack, free_port_block  # noqa: E402

TWIN_WAIT_SECONDS = 1800


def complete_twins(name: str) -> set[str]:
    """Source versions of `name` whose fp32 twin is complete."""
    from mlflow import MlflowClient

    client = MlflowClient()
    if not client.search_registered_models(filter_string=f"name='{name}-onnx'"):
        return set()
    return {v.tags["onnx_stage.twin_of"].rsplit("/", 1)[1]
            for v in client.search_model_versions(f"name='{name}-onnx' and tags.`onnx_stage.complete`='true'")}


def log_versions(count: int, first_seed: int) -> list[str]:
    """Run ids of `count` trained digits models (not registered yet)."""
    from onnx_stage.flows.train_demo import train_and_log
    from onnx_stage.tracking import configure_tracking, use_experiment

    configure_tracking()
    use_experiment("fleet")
    return [train_and_log(epochs=1, seed=first_seed + n)[0] for n in range(count)]


def register_at_once(name: str, run_ids: list[str]) -> list[str]:
    """Register every run's model as a version of `name` at the same moment; the version numbers."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient().create_registered_model(name)
    except MlflowException:
        pass  # registered by an earlier round
    with ThreadPoolExecutor(len(run_ids)) as pool:
        return [str(v.version) for v in pool.map(lambda run: mlflow.register_model(f"runs:/{run}/model", name),
                                                 run_ids)]


def seconds_until_twins(name: str, run_ids: list[str]) -> float:
    started = time.monotonic()
    versions = set(register_at_once(name, run_ids))
    while not versions <= complete_twins(name):
        if time.monotonic() - started > TWIN_WAIT_SECONDS:
            raise SystemExit(f"fleet: {name}: twins of {sorted(versions - complete_twins(name))} missing after "
                             f"{TWIN_WAIT_SECONDS} s; see the stack's logs")
        time.sleep(2)
    return time.monotonic() - started


def bare_conversion_seconds(name: str, version: str, scratch: Path) -> float:
    """The stage's load + convert of the version's own .keras file in a fresh Keras child, nothing else."""
    import mlflow

    from onnx_stage.keras_worker import KerasWorker

    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=str(scratch / "source")))
    model_file = next(local.rglob("*.keras"))
    started = time.monotonic()
    with KerasWorker(600) as worker:
        load_and_convert(worker, name, model_file, scratch / "bare")
    return time.monotonic() - started


def use_fast_conversions(stack: ProductionStack) -> None:
    """The deployments' conversions skip the benchmark task (--quick)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate

    from onnx_stage.config import load_config

    from prefect.settings import PREFECT_API_URL, temporary_settings

    fast = load_config(overrides=["benchmark.enabled=false"]).model_dump(mode="json")
    with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api}), get_client(sync_client=True) as client:
        for deployment in ("convert-keras-to-onnx/on-new-model-version", "convert-keras-to-onnx/convert"):
            found = client.read_deployment_by_name(deployment)
            client.update_deployment(found.id, DeploymentUpdate(parameters={"config": fast}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="conversions without the benchmark task")
    args = parser.parse_args()
    print(machine_line(), flush=True)
    home = Path(tempfile.mkdtemp(prefix="onnx-stage-fleet-"))
    home.chmod(0o755)
    stack = ProductionStack.at(home / "production", free_port_block())
    try:
        started = time.monotonic()
        stack.up()
        print(f"production stack up in {time.monotonic() - started:.0f} s", flush=True)
        scientist = ("fleet-scientist", "fleet-" + os.urandom(6).hex())  # registers the versions, as a team would
        stack.ensure_user(*scientist)
        os.environ.update(MLFLOW_TRACKING_URI=stack.mlflow_uri, MLFLOW_TRACKING_USERNAME=scientist[0],
                          MLFLOW_TRACKING_PASSWORD=scientist[1], ONNX_STAGE_HOME=str(home))
        if args.quick:
            use_fast_conversions(stack)
        runs = log_versions(2 * args.versions + 1, first_seed=100)
        seconds = {}
        for workers, batch in ((1, runs[:args.versions]), (2, runs[args.versions:2 * args.versions])):
            (stack.stop if workers == 1 else stack.start)("worker-2")
            seconds[workers] = seconds_until_twins(f"fleet-{workers}w", batch)
            print(f"{args.versions} versions registered at once, {workers} worker(s): every twin complete after "
                  f"{seconds[workers]:.0f} s", flush=True)
        print(f"fleet ratio (1 worker / 2 workers): {seconds[1] / seconds[2]:.2f}")
        single = seconds_until_twins("fleet-single", runs[-1:])
        with tempfile.TemporaryDirectory() as scratch:
            bare = bare_conversion_seconds("fleet-single", "1", Path(scratch))
        print(f"one version: registration -> complete twin {single:.0f} s; bare load + convert of the same file "
              f"{bare:.0f} s")
        print(f"time-to-twin ratio: {single / bare:.2f}")
        print(machine_line())
    finally:
        stack.down()
    shutil.rmtree(home, ignore_errors=True)  # kept, with the services' logs, when the run failed


if __name__ == "__main__":
    main()
