"""Time to twin: a Keras version registered in MLflow → its ONNX twin complete, through the stack's webhook, bridge,
Prefect trigger and worker, over a bare conversion of the same file in a fresh process.

    .venv/bin/python benchmarks/time_to_twin.py [--profile local|production] [--models mlp,mobilenetv2]
                                                [--repeats 5] [--cold] [--set section.key=value ...]

Prints per model `time-to-twin ratio: X` = median(registration → complete twin) / median(bare conversion), the
paired ratios, a breakdown of the twin's path (medians), and the target (≤ 1.5) with PASS/FAIL, or NOT MEANINGFUL
when processes outside the benchmark took more than 0.25 cores on average (stage_overhead.py's rule).

Method
- Setup, not timed: the stack (deployments/stack.py, or deployments/production.py with --profile production) in a
  temporary directory on free ports, started by the same code as `make stack-up`: MLflow, Prefect, the bridge, and
  the process worker under the warm engine (flows/warm_engine.py). The deployments' conversions run with the
  benchmark task off (as in stage_overhead.py: it measures the twin's speed for a configured time, it checks
  nothing); each --set applies too; the sweep's schedule is paused. --cold runs the deployments' flow runs with `python -m prefect.engine` instead
  of the engine client: the same stack as without the warm engine.
- A child process builds the models (the digits MLP of flows/train_demo.py, a different seed per sample;
  keras.applications.MobileNetV2(weights=None), random weights) and logs each sample's .h5 as a run artifact.
- Twin sample: the clock starts before MlflowClient.create_model_version of a fresh registered model (one name per
  sample: no sample can reuse another's twin) and stops when the twin version's `onnx_stage.complete` tag reads true
  (polled every 0.25 s). The breakdown reads the Prefect event and flow run: registration → the bridge's event,
  event → flow run created (trigger), created → running (worker poll, process start), running → completed (the flow
  run), and the rest (the poll).
- Bare sample: stage_overhead.py's: a fresh `python -c` that imports TensorFlow, Keras, onnxmltools, loads the .h5
  and converts it.
- Before every sample the benchmark waits (up to 60 s) until no flow run is running and the machine is idle (< 0.2
  cores busy over 1 s): the warm engine starts its next ready process after each run, and that must not land in the
  next sample: what is measured is one version registered on an idle stack. Pairs back
  to back, order flipped every pair.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from stage_overhead import LABELS, QUIET_CORES, OtherLoad, bare_sample  # noqa: E402

TARGET = 1.5
MIN_PAIRS = 5
TWIN_WAIT_SECONDS = 900
IDLE_CORES, IDLE_WAIT_SECONDS = 0.2, 60

BUILD_CODE = r"""
import json, sys
from pathlib import Path
import keras, mlflow
from onnx_stage.flows.train_demo import train_digits_mlp

out, plan = Path(sys.argv[1]), json.loads(sys.argv[2])
builders = {"mlp": lambda seed: train_digits_mlp(1, seed)[0],
            "mobilenetv2": lambda seed: (keras.utils.set_random_seed(seed), keras.applications.MobileNetV2(weights=None))[1]}
mlflow.set_experiment("time-to-twin-bench")
samples = {}
for model_key, count in plan.items():
    samples[model_key] = []
    for seed in range(count):
        h5 = out / f"{model_key}-{seed}.h5"
        builders[model_key](seed).save(str(h5))
        with mlflow.start_run(run_name=f"time-to-twin {model_key} {seed}") as run:
            mlflow.log_artifact(str(h5), artifact_path="model")
        samples[model_key].append({"h5": str(h5), "run_id": run.info.run_id, "source": f"{run.info.artifact_uri}/model"})
print("SAMPLES " + json.dumps(samples))
"""


def start_stack(profile: str, home: Path):
    """The stack, up, and this process made its client (MLflow and Prefect environment)."""
    from deployments.servers import free_port

    if profile == "production":
        from deployments.production import ProductionStack, free_port_block

        stack = ProductionStack.at(home / "production", free_port_block())
    else:
        from deployments.stack import Stack

        stack = Stack(state_dir=home / "stack", mlflow_port=free_port(), prefect_port=free_port(),
                      bridge_port=free_port(), worker_port=free_port())
    stack.up()
    os.environ.update(stack.client_env())
    if profile == "production":  # a team member registers the versions, as in fleet.py
        scientist = ("bench-scientist", "bench-" + os.urandom(6).hex())
        stack.ensure_user(*scientist)
        os.environ.update(MLFLOW_TRACKING_USERNAME=scientist[0], MLFLOW_TRACKING_PASSWORD=scientist[1])
    return stack


def configure_deployments(overrides: list[str], cold: bool) -> None:
    """The event deployment's conversions: benchmark task off plus --set; --cold: Prefect's own engine command. The
    sweep is paused."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate

    from onnx_stage.config import load_config

    config = load_config(overrides=["benchmark.enabled=false", *overrides]).model_dump(mode="json")
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("convert-keras-to-onnx/on-new-model-version")
        update = {"parameters": {"config": config}}
        if cold:
            update["job_variables"] = {**(deployment.job_variables or {}), "command": "python -m prefect.engine"}
        client.update_deployment(deployment.id, DeploymentUpdate(**update))
        sweep = client.read_deployment_by_name("sweep-unconverted-versions/sweep")
        client.update_deployment(sweep.id, DeploymentUpdate(paused=True))  # its cron run would land in a sample


def wait_until_idle() -> float:
    """Seconds waited until no flow run is running or about to, then the machine's busy CPU stays under IDLE_CORES
    for a second (at most IDLE_WAIT_SECONDS): a twin's flow run goes on for a second or two after the twin is
    complete, and its worker's engine starts the next ready process only after it."""
    import psutil
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    started = time.monotonic()
    active = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING,
                                                                                     StateType.PENDING])))
    with get_client(sync_client=True) as client:
        while client.read_flow_runs(flow_run_filter=active) and time.monotonic() - started < IDLE_WAIT_SECONDS:
            time.sleep(0.5)
    while time.monotonic() - started < IDLE_WAIT_SECONDS:
        before = psutil.cpu_times()
        time.sleep(1)
        after = psutil.cpu_times()
        busy = (sum(after) - after.idle - after.iowait) - (sum(before) - before.idle - before.iowait)
        if busy < IDLE_CORES:
            break
    return time.monotonic() - started


def twin_sample(name: str, sample: dict) -> dict:
    """Register `sample` as version 1 of `name`; seconds until its twin is complete, and where they went."""
    from mlflow import MlflowClient

    client = MlflowClient()
    started_wall, started = time.time(), time.monotonic()
    client.create_registered_model(name)
    client.create_model_version(name, source=sample["source"], run_id=sample["run_id"])
    wait_for_complete_twin(name, started)
    seconds = time.monotonic() - started
    return {"wall": seconds, **path_breakdown(name, started_wall, started_wall + seconds)}


def wait_for_complete_twin(name: str, started: float) -> None:
    """Until version 1 of `name` has a complete twin (polled every 0.25 s); fails TWIN_WAIT_SECONDS after `started`
    (time.monotonic())."""
    from mlflow import MlflowClient

    client = MlflowClient()
    while not client.search_model_versions(f"name='{name}-onnx' and tags.`onnx_stage.complete`='true'"):
        if time.monotonic() - started > TWIN_WAIT_SECONDS:
            raise RuntimeError(f"no complete twin of {name} after {TWIN_WAIT_SECONDS} s; see the stack's logs")
        time.sleep(0.25)


def path_breakdown(name: str, registered: float, complete: float) -> dict:
    """Seconds per leg of the twin's path, from the bridge's Prefect event and the flow run the trigger created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with get_client(sync_client=True) as client:
        runs = [run for run in client.read_flow_runs(deployment_filter=DeploymentFilter(
            name=DeploymentFilterName(any_=["on-new-model-version"]))) if run.parameters.get("model_name") == name]
        events = client.request("POST", "/events/filter", json={"filter": {
            "event": {"name": ["mlflow.model_version.created"]},
            "resource": {"id": [f"mlflow.model_version.{name}.1"]},
            "occurred": {"since": time_iso(registered - 60)}}}).json().get("events", [])
    if len(runs) != 1 or not events or runs[0].start_time is None:
        return {}
    run = runs[0]
    event = min(parse_time(found["occurred"]) for found in events)
    created, start = run.created.timestamp(), run.start_time.timestamp()
    end = min(run.end_time.timestamp() if run.end_time else complete, complete)
    return {"registered → event": event - registered, "event → flow run": created - event,
            "flow run → running": start - created, "running → complete": end - start, "detected": complete - end}


def time_iso(epoch: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat()


def parse_time(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=["local", "production"], default="local")
    parser.add_argument("--models", default="mlp,mobilenetv2")
    parser.add_argument("--repeats", type=int, default=MIN_PAIRS)
    parser.add_argument("--cold", action="store_true", help="flow runs without the warm engine")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args()
    models = args.models.split(",")
    home = Path(tempfile.mkdtemp(prefix="onnx-stage-ttt-"))
    home.chmod(0o755)
    started = time.monotonic()
    stack = start_stack(args.profile, home)
    print(f"{args.profile} stack up in {time.monotonic() - started:.0f} s "
          f"({'cold: python -m prefect.engine' if args.cold else 'warm engine'})", flush=True)
    try:
        configure_deployments(args.overrides, args.cold)
        built = subprocess.run([sys.executable, "-c", BUILD_CODE, str(home),
                                json.dumps({model: args.repeats + 1 for model in models})],
                               capture_output=True, text=True, cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        if built.returncode != 0:
            raise SystemExit(f"time_to_twin: building the models failed:\n{built.stderr[-3000:]}")
        samples = json.loads(next(line for line in built.stdout.splitlines() if line.startswith("SAMPLES "))[8:])
        stamp = os.urandom(3).hex()
        results = {}
        for model in models:
            results[model] = {"twin": [], "bare": []}
            for index, sample in enumerate(samples[model]):  # sample 0: untimed warm-up of this model's path
                order = ("twin", "bare") if index % 2 else ("bare", "twin")
                for kind in order:
                    wait_until_idle()
                    with OtherLoad() as other:
                        if kind == "twin":
                            result = twin_sample(f"ttt-{model}-{stamp}-{index}", sample)
                        else:
                            result = bare_sample(sample["h5"], home, os.environ.copy(), f"bare-{model}-{index}")
                    result["other_cores"] = other.cores
                    if index:
                        results[model][kind].append(result)
                    print(f"  {model} {'warm-up ' if not index else ''}{kind}: {result['wall']:.2f} s "
                          f"[other processes {other.cores:.2f} cores]", flush=True)
        report(results, args)
    finally:
        stack.down()
    shutil.rmtree(home, ignore_errors=True)  # kept, with the services' logs, when the run failed
    return 0


def report(results: dict, args: argparse.Namespace) -> None:
    print(f"\ntime to twin ({args.profile} stack, {'cold' if args.cold else 'warm engine'}; "
          f"benchmark task off{', ' + ', '.join(args.overrides) if args.overrides else ''})")
    for model, samples in results.items():
        twins, bares = [s["wall"] for s in samples["twin"]], [s["wall"] for s in samples["bare"]]
        ratio = statistics.median(twins) / statistics.median(bares)
        paired = sorted(t / b for t, b in zip(twins, bares))
        others = [s["other_cores"] for s in samples["twin"] + samples["bare"]]
        print(f"{LABELS[model]}: registration → twin median {statistics.median(twins):.2f} s "
              f"({', '.join(f'{t:.2f}' for t in twins)}); bare conversion median {statistics.median(bares):.2f} s "
              f"({', '.join(f'{b:.2f}' for b in bares)})")
        legs = [key for key in samples["twin"][0] if key not in ("wall", "other_cores")]
        print("  path (medians): " + ", ".join(
            f"{leg} {statistics.median(s[leg] for s in samples['twin'] if leg in s):.2f} s" for leg in legs))
        print(f"  paired ratios: {', '.join(f'{p:.2f}' for p in paired)}; other processes "
              f"{statistics.median(others):.2f} cores (median)")
        if statistics.median(others) > QUIET_CORES or len(paired) < MIN_PAIRS:
            verdict = "NOT MEANINGFUL (a busy machine or fewer than 5 pairs)"
        else:
            verdict = "PASS" if ratio <= TARGET else "FAIL"
        print(f"  time-to-twin ratio: {ratio:.2f} (target ≤ {TARGET}): {verdict}")


if __name__ == "__main__":
    sys.exit(main())
