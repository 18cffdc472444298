"""Stage overhead: the conversion flow's wall time vs a bare onnxmltools load + convert + save of the same .h5.

Run from the repo root:  .venv/bin/python benchmarks/stage_overhead.py  [--repeats 5] [--models mlp,mobilenetv2]
                                                                         [--set section.key=value ...]

For (a) the digits MLP of flows/train_demo.py and (b) keras.applications.MobileNetV2(weights=None) (random
weights, nothing is downloaded) it prints `ratio: X` with

    X = median flow wall time (benchmark task disabled) / median bare subprocess wall time

next to a target (≤ 1.3 for both) and PASS/FAIL, the paired ratios' spread, and the CPU that processes outside
this benchmark took while it measured. When that exceeds QUIET_CORES (or there are fewer than 5 pairs) the verdict
reads NOT MEANINGFUL instead: the flow uses both cores where the bare run uses one, so another process's load
inflates the ratio. A missed target is not an error: the exit code is non-zero only when something fails to run.

Method
- Setup, not timed: a real `mlflow server` (sqlite) and a real `prefect server` on 127.0.0.1 with their state
  in a temp dir (deployments.servers). A child process trains/builds the models, saves each as .h5
  (model.save("x.h5")), logs it as a run artifact under `model/` and registers that folder under a fresh
  name per flow run (`so-<model>-<stamp>-<n>`), so no run can take the idempotent "already registered"
  shortcut. mlflow.register_model("runs:/<run>/model") is tried first; MLflow 3.17 refuses it for a folder
  without an MLmodel file, so the fallback is MlflowClient.create_model_version(source=<run artifact
  URI>/model, run_id=<run>): the version holds exactly the .h5 either way.
- Flow sample: a fresh `python` child per sample imports
  onnx_stage.flows.convert_flow (not timed: a production worker is
  already up), then calls convert_model(model_name=..., version="1", config=<default.yaml with
  benchmark.enabled=false and each --set>). The flow wall time is the flow run's end_time - start_time as recorded by the
  Prefect server (read back with get_client().read_flow_run); it includes everything the flow body does,
  the Keras child's start (TF import) included. The child also times the convert_model(...) call itself
  (flow-run creation and final-state round trips included) and prints it as "call".
  Light probes (time.time() around a few functions, microseconds each) give a breakdown inside the tasks.
- Bare sample: the wall time of a fresh `python -c` child that imports tensorflow, keras, onnx, onnxmltools,
  runs keras.models.load_model(h5, compile=False), sets model.output_names = None (without it
  onnxmltools.convert_keras fails on every Keras 3 model with KeyError 'keras_tensor_N'; the stage's
  onnxmltools route does the same), onnxmltools.convert_keras(model, target_opset=17), onnx.save_model(...).
- One untimed warm-up pair on the MLP (page cache, server first-use), then per model `--repeats` pairs, each
  pair back to back, order flipped every pair, to spread machine noise. Medians and the ratio of medians are
  reported, with every sample and each pair's own ratio.
- Other processes' load, per sample: the machine's busy CPU seconds (/proc/stat through psutil) minus what this
  benchmark's own processes used (the sample's process tree, reaped, from RUSAGE_CHILDREN; the mlflow and prefect
  servers from psutil), over the sample's wall time, in cores. The 1-minute load average is printed too, but it
  counts this benchmark's own previous sample.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Iterator

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # see onnx_stage/__init__.py; the children inherit it

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TARGETS = {"mlp": 1.3, "mobilenetv2": 1.3}
MIN_PAIRS = 5  # fewer pairs give no verdict
QUIET_CORES = 0.25  # other processes' mean CPU use (cores) above which a sample set is not meaningful
LABELS = {"mlp": "digits MLP (64→64 relu→10 softmax)", "mobilenetv2": "MobileNetV2(weights=None)"}
TASK_ORDER = ["warm-up-packaging", "fetch", "load", "find-existing-twin", "convert", "choose-validation-inputs",
              "optimize-graph", "package", "validate",
              "validate-variants", "benchmark", "register",
              "check-consumer-load", "publish", "summarise"]

BARE_CODE = r"""
import json, sys, time
t0 = time.perf_counter()
import tensorflow, keras, onnx, onnxmltools
t1 = time.perf_counter()
model = keras.models.load_model(sys.argv[1], compile=False)
t2 = time.perf_counter()
model.output_names = None  # onnxmltools 1.16 + Keras 3: else KeyError 'keras_tensor_N' (see onnxmltools_route.py)
proto = onnxmltools.convert_keras(model, target_opset=17)
t3 = time.perf_counter()
onnx.save_model(proto, sys.argv[2])
t4 = time.perf_counter()
print("BARE " + json.dumps({"import": t1 - t0, "load_model": t2 - t1, "convert_keras": t3 - t2,
                            "save_model": t4 - t3, "output_names_reset": model.output_names is None}))
"""


# ----------------------------------------------------------------------------------------------- child: prepare
def child_prepare(out_dir: Path, stamp: str, names_per_model: dict[str, int], epochs: int) -> None:
    """Build the models, save them as .h5, log each under `model/` of one run and register it under N names."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import mlflow

    from onnx_stage.flows.train_demo import train_digits_mlp

    builders = {
        "mlp": lambda: train_digits_mlp(epochs, 0)[0],
        "mobilenetv2": lambda: keras.applications.MobileNetV2(weights=None),  # random weights: no download
    }
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    mlflow.set_experiment("stage-overhead-bench")
    result = {}
    for model_key, count in names_per_model.items():
        model = builders[model_key]()
        h5 = out_dir / f"{model_key}.h5"
        model.save(str(h5))
        with mlflow.start_run(run_name=f"stage-overhead {model_key}") as run:
            mlflow.log_artifact(str(h5), artifact_path="model")
        names, how = [], None
        for index in range(count):
            name = f"so-{model_key}-{stamp}-{index}"
            version, how = register_h5(name, run, how)
            if str(version) != "1":
                raise RuntimeError(f"{name} got version {version}, expected a fresh model at version 1")
            names.append(name)
        result[model_key] = {"h5": str(h5), "bytes": h5.stat().st_size, "names": names,
                             "params": int(model.count_params()), "registered_via": how}
    (out_dir / "prepared.json").write_text(json.dumps(result))


def register_h5(name: str, run, how: str | None) -> tuple[str, str]:
    """Register the run's `model/` folder (holding only the .h5) as version 1 of `name`.

    MLflow 3.17's register_model("runs:/<run>/model") only accepts a folder with an MLmodel file or a logged
    model (else: "Unable to find a logged_model with artifact_path model"); for a bare .h5 artifact fall back
    to create_model_version(source=<run artifact URI>/model, run_id=<run>), the same version content.
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if how in (None, "register_model(runs:/)"):
        try:
            return mlflow.register_model(f"runs:/{run.info.run_id}/model", name).version, "register_model(runs:/)"
        except MlflowException as error:
            if "Unable to find a logged_model" not in str(error):
                raise
    client = MlflowClient()
    if not client.search_registered_models(filter_string=f"name='{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    return version.version, "create_model_version(source=<run artifacts>/model)"


# -------------------------------------------------------------------------------------------- child: flow run
def child_flow(model_name: str, result_file: Path, overrides: list[str]) -> None:
    """One flow run in this (fresh) process; imports are not timed, the convert_model(...) call is."""
    started_imports = time.perf_counter()
    from onnx_stage.flows.convert_flow import convert_model
    from onnx_stage.config import load_config

    config = load_config(None, ["benchmark.enabled=false", *overrides])
    events = install_probes() if os.environ.get("STAGE_OVERHEAD_PROBES", "1") == "1" else []
    import_seconds = time.perf_counter() - started_imports

    call_start = time.time()
    state = convert_model(model_name=model_name, version="1", config=config, return_state=True)
    call_end = time.time()
    twin = state.result()
    result_file.write_text(json.dumps({
        "flow_run_id": str(state.state_details.flow_run_id), "state": state.type.value,
        "created": twin.created, "twin": twin.uri, "import_seconds": import_seconds,
        "call_start": call_start, "call_end": call_end, "probes": events,
    }))


def install_probes() -> list:
    """Wrap a few functions with time.time() stamps (µs of overhead each) for the per-phase breakdown.

    Only modules that the flow module has already imported are touched (no import moves out of the timed
    window); a function that is missing (the core code changed) is skipped.
    """
    import functools

    events: list = []

    def wrap(module_name: str, path: str, label) -> None:
        owner = sys.modules.get(module_name)
        *parents, attr = path.split(".")
        for parent in parents:
            owner = getattr(owner, parent, None)
        raw = getattr(owner, "__dict__", {}).get(attr) if owner is not None else None
        if raw is None:
            return
        is_classmethod = isinstance(raw, classmethod)
        original = raw.__func__ if is_classmethod else raw

        @functools.wraps(original)
        def probe(*args, **kwargs):
            start = time.time()
            try:
                return original(*args, **kwargs)
            finally:
                events.append([label(args, kwargs) if callable(label) else label, start, time.time()])

        setattr(owner, attr, classmethod(probe) if is_classmethod else probe)

    worker = "onnx_stage.keras_worker"
    wrap(worker, "KerasWorker.__init__", "keras child: Popen (spawn)")
    wrap(worker, "KerasWorker.call", lambda a, k: f"keras child: {a[1] if len(a) > 1 else k.get('operation')}")
    wrap(worker, "KerasWorker.close", "keras child: kill")
    wrap("onnx_stage.tasks.load", "resolve_version", "mlflow: resolve version")
    wrap("onnx_stage.tasks.load", "fetch_artifacts", "mlflow: download artifacts")
    wrap("onnx_stage.tasks.load", "sha256_of", "sha256 of the model file")
    wrap("onnx_stage.tasks.load", "save_input_example", "input example")
    wrap("onnx_stage.tasks.convert", "write_renderings", "parent: JSON + text renderings")
    wrap("onnx", "load", "parent: onnx.load")
    wrap("onnx.checker", "check_model", "parent: onnx.checker")
    wrap("onnx_stage.tasks.register", "infer_signature", "mlflow: infer_signature")
    wrap("mlflow", "start_run", "mlflow: start_run")
    wrap("mlflow.onnx", "save_model", "mlflow: onnx save_model")
    wrap("mlflow", "log_artifacts", "mlflow: upload model artifacts")
    wrap("mlflow.models.utils", "_save_example", "mlflow: save input example (JSON)")
    wrap("mlflow.models.utils", "_validate_serving_input", "mlflow: validate serving input (pyfunc load+predict)")
    wrap("mlflow.utils.environment", "warn_dependency_requirement_mismatches", "mlflow: requirement mismatch check")
    wrap("mlflow.utils.requirements_utils", "warn_dependency_requirement_mismatches",
         "mlflow: requirement mismatch check")
    wrap("mlflow", "register_model", "mlflow: register_model (twin)")
    wrap("mlflow", "log_metrics", "mlflow: log_metrics")
    wrap("mlflow.tracking.client", "MlflowClient.update_model_version", "mlflow: version description")
    wrap("mlflow.pyfunc", "load_model", "mlflow: pyfunc load_model (consumer check)")
    wrap("onnx_stage.tasks.validate", "onnx_outputs", "parent: onnxruntime session + outputs")
    wrap("onnx_stage.flows.convert_flow", "create_markdown_artifact", "prefect: markdown artifact")
    return events


# ---------------------------------------------------------------------------------------------- parent helpers
class OtherLoad:
    """CPU that processes outside this benchmark use while a block runs, in cores (mean over the block).

    busy = the machine's non-idle CPU seconds; ours = this process, its reaped children (RUSAGE_CHILDREN: a sample's
    process and the Keras child it waited for) and its live descendants (the servers). other = busy - ours."""

    def __enter__(self) -> "OtherLoad":
        self._start, self._busy, self._ours = time.perf_counter(), self._machine_busy(), self._own_cpu()
        return self

    def __exit__(self, *_: object) -> None:
        wall = time.perf_counter() - self._start
        other = (self._machine_busy() - self._busy) - (self._own_cpu() - self._ours)
        self.cores = max(other, 0.0) / wall

    @staticmethod
    def _machine_busy() -> float:
        import psutil

        times = psutil.cpu_times()
        return sum(times) - times.idle - getattr(times, "iowait", 0.0)

    @staticmethod
    def _own_cpu() -> float:
        import psutil

        mine = os.times()
        total = mine.user + mine.system + mine.children_user + mine.children_system
        for process in psutil.Process().children(recursive=True):
            try:
                cpu = process.cpu_times()
                total += cpu.user + cpu.system + cpu.children_user + cpu.children_system
            except psutil.NoSuchProcess:
                pass
        return total


def run_child(command: list[str], env: dict[str, str], log: Path, timeout: float) -> tuple[float, str]:
    started = time.perf_counter()
    completed = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - started
    log.write_text(f"$ {' '.join(command[:3])} ...\n--- stdout\n{completed.stdout}\n--- stderr\n{completed.stderr}")
    if completed.returncode != 0:
        tail = "\n".join((completed.stderr or completed.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"child failed with exit code {completed.returncode} (log: {log}):\n{tail}")
    return wall, completed.stdout


def bare_sample(h5: str, work: Path, env: dict[str, str], tag: str) -> dict:
    wall, stdout = run_child([PYTHON, "-c", BARE_CODE, h5, str(work / f"{tag}.onnx")], env,
                             work / f"{tag}.log", timeout=600)
    line = next(l for l in stdout.splitlines() if l.startswith("BARE "))
    phases = json.loads(line[5:])
    if not phases.pop("output_names_reset"):
        raise RuntimeError("bare baseline did not reset model.output_names")
    return {"wall": wall, "phases": phases}


def flow_sample(name: str, work: Path, env: dict[str, str], tag: str, overrides: list[str]) -> dict:
    result_file = work / f"{tag}.json"
    wall, _ = run_child([PYTHON, str(Path(__file__).resolve()), "_flow", name, str(result_file),
                         json.dumps(overrides)], env,
                        work / f"{tag}.log", timeout=900)
    result = json.loads(result_file.read_text())
    if not result["created"]:
        raise RuntimeError(f"flow run for {name} took the 'already registered' shortcut; the sample is invalid")
    result["process_wall"] = wall
    return result


def read_prefect(flow_run_ids: list[str], timeout: float = 60) -> dict[str, dict]:
    """Flow runs' start/end and their task runs, from the Prefect server (task runs arrive via events)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    found: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        for run_id in flow_run_ids:
            while True:
                flow_run = client.read_flow_run(run_id)
                task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
                complete = [t for t in task_runs if t.start_time and t.end_time]
                if (len(complete) >= len(TASK_ORDER) and flow_run.end_time) or time.monotonic() > deadline:
                    break
                time.sleep(1)
            found[run_id] = {
                "start": flow_run.start_time.timestamp() if flow_run.start_time else None,
                "end": flow_run.end_time.timestamp() if flow_run.end_time else None,
                "total_run_time": flow_run.total_run_time.total_seconds(),
                "state": flow_run.state_type.value if flow_run.state_type else None,
                "tasks": sorted(({"name": task_name(t.name),
                                  "start": t.start_time.timestamp(), "end": t.end_time.timestamp()}
                                 for t in complete), key=lambda t: t["start"]),
            }
    return found


def task_name(run_name: str) -> str:
    """Prefect names task runs `<task name>-<3 hex digits>`."""
    match = re.fullmatch(r"(.+)-[0-9a-f]{3}", run_name)
    return match.group(1) if match else run_name


def fmt_samples(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def median(values: list[float]) -> float:
    return statistics.median(values)


# ---------------------------------------------------------------------------------------------------- parent
@contextmanager
def servers(work: Path) -> Iterator[tuple[str, Future]]:
    """Setup, not timed: `mlflow server` up, `prefect server` starting in a thread meanwhile (the models are
    built and registered while it starts; they only need MLflow). Yields the tracking URI and a future of the
    Prefect API URL; stops both on exit."""
    from deployments.servers import mlflow_server, prefect_server

    prefect_cm = prefect_server(work / "prefect")
    with ThreadPoolExecutor(1) as pool, mlflow_server(work / "mlflow") as tracking_uri:
        prefect_starting = pool.submit(prefect_cm.__enter__)
        try:
            yield tracking_uri, prefect_starting
        finally:
            try:
                prefect_starting.result()
            except Exception:
                pass  # it never came up: nothing to stop (servers.running() already killed it)
            else:
                prefect_cm.__exit__(None, None, None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=MIN_PAIRS, help=f"flow/bare pairs per model (default {MIN_PAIRS})")
    parser.add_argument("--models", default="mlp,mobilenetv2", help="comma list of: mlp, mobilenetv2")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs of the digits MLP")
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up pair")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, server state)")
    parser.add_argument("--no-probes", action="store_true", help="no in-flow probes (breakdown: tasks only)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="config override for the flow runs, e.g. convert.graph_optimizations=[] (repeatable)")
    args = parser.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(models) - set(TARGETS)
    if unknown or args.repeats < 1:
        parser.error(f"unknown model(s) {sorted(unknown)} or repeats < 1")

    began = time.perf_counter()
    temp = tempfile.mkdtemp(prefix="stage-overhead-")
    work = Path(temp)
    stamp = datetime.now().strftime("%Y%m%d%H%M%S")
    print(f"stage overhead benchmark  (python {sys.version.split()[0]}, {os.cpu_count()} cores, "
          f"load avg {os.getloadavg()[0]:.1f}; {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; temp dir {work})"
          + (f"; flow config: benchmark.enabled=false {' '.join(args.overrides)}" if args.overrides else ""), flush=True)
    try:
        with servers(work) as (tracking_uri, prefect_starting):
            env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
                   "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "TF_CPP_MIN_LOG_LEVEL": "3",
                   "PREFECT_HOME": str(work / "prefect-client"), "ONNX_STAGE_HOME": str(work / "stage"),
                   "KERAS_BACKEND": "tensorflow", "PYTHONUNBUFFERED": "1",
                   "STAGE_OVERHEAD_PROBES": "0" if args.no_probes else "1"}
            print(f"mlflow server up in {time.perf_counter() - began:.0f} s: {tracking_uri}", flush=True)

            warmup = 0 if args.no_warmup else 1
            counts = {m: args.repeats + (warmup if m == "mlp" else 0) for m in models}
            if warmup and "mlp" not in counts:
                counts["mlp"] = warmup
            started = time.perf_counter()
            run_child([PYTHON, str(Path(__file__).resolve()), "_prepare", str(work), stamp, json.dumps(counts),
                       str(args.epochs)], env, work / "prepare.log", timeout=900)
            prepared = json.loads((work / "prepared.json").read_text())
            print(f"models built, saved as .h5, logged under model/ and registered in "
                  f"{time.perf_counter() - started:.0f} s: " + ", ".join(
                      f"{m} {p['params']:,} params, {p['bytes'] / 1e6:.2f} MB .h5" for m, p in prepared.items()),
                  flush=True)
            for m, p in prepared.items():
                print(f"  {m}: registered {len(p['names'])} names via {p['registered_via']}"
                      + ("  [MLflow 3.17 rejects runs:/<run>/model for a folder without MLmodel]"
                         if "create_model_version" in p["registered_via"] else ""), flush=True)
            api_url = prefect_starting.result()
            env["PREFECT_API_URL"] = api_url
            os.environ.update({k: env[k] for k in ("PREFECT_API_URL", "PREFECT_HOME",
                                                   "PREFECT_SERVER_ANALYTICS_ENABLED")})
            print(f"prefect server up ({time.perf_counter() - began:.0f} s after start): {api_url}", flush=True)
            print("bare baseline: fresh `python -c` (import tensorflow, keras, onnx, onnxmltools; load_model; "
                  "model.output_names = None [Keras 3 workaround]; convert_keras(target_opset=17); save_model), "
                  "whole-process wall time", flush=True)

            if warmup:
                names = prepared["mlp"]["names"]
                flow = flow_sample(names[-1], work, env, "warmup-flow", args.overrides)
                bare = bare_sample(prepared["mlp"]["h5"], work, env, "warmup-bare")
                print(f"warm-up (discarded): mlp flow call {flow['call_end'] - flow['call_start']:.2f} s, "
                      f"bare {bare['wall']:.2f} s", flush=True)

            samples: dict[str, dict[str, list]] = {}
            for model_key in models:
                names, h5 = prepared[model_key]["names"], prepared[model_key]["h5"]
                samples[model_key] = {"flow": [], "bare": []}
                for index in range(args.repeats):
                    order = ("flow", "bare") if index % 2 == 0 else ("bare", "flow")
                    for kind in order:
                        tag, load = f"{model_key}-{kind}-{index}", os.getloadavg()[0]
                        with OtherLoad() as other:
                            if kind == "flow":
                                sample = flow_sample(names[index], work, env, tag, args.overrides)
                                seconds = sample["call_end"] - sample["call_start"]
                            else:
                                sample = bare_sample(h5, work, env, tag)
                                seconds = sample["wall"]
                        sample["load_before"], sample["other_cores"] = load, other.cores
                        print(f"  {model_key} sample {index + 1}: {kind} {seconds:.2f} s"
                              f"{' (convert_model call)' if kind == 'flow' else ''}  [load avg before {load:.1f}; "
                              f"other processes {other.cores:.2f} cores]", flush=True)
                        samples[model_key][kind].append(sample)

            flow_ids = [s["flow_run_id"] for m in samples.values() for s in m["flow"]]
            prefect_runs = read_prefect(flow_ids)
    finally:
        if not args.keep:
            import shutil
            shutil.rmtree(temp, ignore_errors=True)

    report(samples, prefect_runs)
    print(f"\ntotal benchmark time {time.perf_counter() - began:.0f} s"
          + (f"; logs and state kept in {work}" if args.keep else ""))
    return 0


def report(samples: dict[str, dict[str, list]], prefect_runs: dict[str, dict]) -> None:
    print("\n=== results (seconds; flow = Prefect flow run end_time - start_time, benchmark.enabled=false;"
          " bare = fresh-process wall time)")
    for model_key, kinds in samples.items():
        flows, bares = kinds["flow"], kinds["bare"]
        flow_times, source = [], "prefect"
        for sample in flows:
            run = prefect_runs.get(sample["flow_run_id"], {})
            if run.get("start") and run.get("end"):
                flow_times.append(run["end"] - run["start"])
            else:  # should not happen; say so rather than silently mixing clocks
                flow_times.append(sample["call_end"] - sample["call_start"])
                source = "in-process call (Prefect had no start/end for some runs)"
        call_times = [s["call_end"] - s["call_start"] for s in flows]
        bare_times = [s["wall"] for s in bares]
        ratio = median(flow_times) / median(bare_times)
        target = TARGETS[model_key]
        verdict = "PASS" if ratio <= target else "FAIL"
        print(f"\n{LABELS[model_key]}")
        print(f"  flow samples ({source}): {fmt_samples(flow_times)}  median {median(flow_times):.2f}")
        print(f"  flow samples (in-process convert_model(...) call, incl. flow-run creation/final state): "
              f"{fmt_samples(call_times)}  median {median(call_times):.2f}")
        print(f"  bare samples: {fmt_samples(bare_times)}  median {median(bare_times):.2f}")
        for phase in ("import", "load_model", "convert_keras", "save_model"):
            values = [s["phases"][phase] for s in bares]
            print(f"    bare {phase:<13} median {median(values):6.2f}")
        rest = [s["wall"] - sum(s["phases"].values()) for s in bares]
        print(f"    bare {'start+exit':<13} median {median(rest):6.2f}  (interpreter start, TF teardown at exit)")
        paired = [f / b for f, b in zip(flow_times, bare_times)]
        quartiles = statistics.quantiles(paired, n=4) if len(paired) > 1 else paired * 3
        print(f"  paired ratios (each flow / the bare run next to it): {fmt_samples(paired)}  "
              f"median {median(paired):.2f}, spread {min(paired):.2f}–{max(paired):.2f}, "
              f"IQR {quartiles[0]:.2f}–{quartiles[2]:.2f}")
        others = [s["other_cores"] for s in flows + bares]
        loads = [s["load_before"] for s in flows + bares]
        print(f"  machine: other processes used {median(others):.2f} cores (median; max {max(others):.2f}) of "
              f"{os.cpu_count()} during the samples; 1-min load average {min(loads):.1f}–{max(loads):.1f} "
              "(includes this benchmark)")
        if median(others) > QUIET_CORES or len(paired) < MIN_PAIRS:
            verdict = (f"NOT MEANINGFUL (other processes took {median(others):.2f} cores > {QUIET_CORES}: rerun on a "
                       "quiet machine)" if len(paired) >= MIN_PAIRS else f"NOT MEANINGFUL (fewer than {MIN_PAIRS} pairs)")
        print(f"  {model_key}: ratio: {ratio:.2f}  (target ≤ {target})  {verdict}"
              f"   [call-time ratio {median(call_times) / median(bare_times):.2f}]")
        breakdown(model_key, flows, flow_times, prefect_runs)


def breakdown(model_key: str, flows: list[dict], flow_times: list[float], prefect_runs: dict) -> None:
    """Per-task medians across samples, then the full timeline of the median sample."""
    per_task: dict[str, list[float]] = {}
    offsets: dict[str, list[float]] = {}
    gaps: list[float] = []
    pre, post = [], []
    for sample in flows:
        run = prefect_runs.get(sample["flow_run_id"])
        if not run or not run["start"]:
            continue
        covered = 0.0
        for task in run["tasks"]:
            per_task.setdefault(task["name"], []).append(task["end"] - task["start"])
            offsets.setdefault(task["name"], []).append(task["start"] - run["start"])
            covered += task["end"] - task["start"]
        gaps.append((run["end"] - run["start"]) - covered)
        pre.append(run["start"] - sample["call_start"])
        post.append(sample["call_end"] - run["end"])
    if not per_task:
        print("  (no Prefect task runs found for a breakdown)")
        return
    print(f"  breakdown, medians over {len(gaps)} flow runs (Prefect task runs):")
    print(f"    {'before flow start (create run, validate params)':<52} {median(pre):6.2f}")
    for name in sorted(per_task, key=lambda n: median(offsets[n])):
        print(f"    task {name:<47} {median(per_task[name]):6.2f}")
    print(f"    {'flow body outside tasks (spawn child, kill, txn...)':<52} {median(gaps):6.2f}")
    print(f"    {'after flow end (return to caller)':<52} {median(post):6.2f}")

    ordered = sorted(range(len(flows)), key=lambda i: flow_times[i])
    sample = flows[ordered[len(ordered) // 2]]
    run = prefect_runs[sample["flow_run_id"]]
    zero = run["start"]
    rows = [(t["start"], t["end"], f"TASK {t['name']}") for t in run["tasks"]]
    rows += [(start, end, f"  · {label}") for label, start, end in sample["probes"]]
    rows.sort(key=lambda r: (r[0], not r[2].startswith("TASK")))
    print(f"  timeline of the median flow run ({run['end'] - zero:.2f} s; t=0 is the flow run's start):")
    for start, end, label in rows:
        print(f"    {start - zero:7.2f} → {end - zero:7.2f}  {end - start:6.2f}  {label}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_prepare":
        sys.path.insert(0, str(REPO))
        child_prepare(Path(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4]), int(sys.argv[5]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_flow":
        sys.path.insert(0, str(REPO))
        child_flow(sys.argv[2], Path(sys.argv[3]), json.loads(sys.argv[4]))
    else:
        sys.path.insert(0, str(REPO))
        try:
            sys.exit(main())
        except KeyboardInterrupt:
            sys.exit(130)
        except Exception as error:  # a failure to run is an error (non-zero); a missed target is not
            print(f"stage_overhead: error: {type(error).__name__}: {error}", file=sys.stderr)
            sys.exit(1)
