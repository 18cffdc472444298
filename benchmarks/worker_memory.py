"""Worker memory: resident memory of one long-lived process that runs the conversion flow N times in a row.

Run from the repo root:  .venv/bin/python benchmarks/worker_memory.py  [--runs 20] [--set benchmark.min_seconds=0.2]
                                                                          [--shared-client] [--tracemalloc]

A Prefect worker that runs flows in its own process (a served deployment, a long-lived task worker) converts one
version after another without restarting. This script does that: one child process imports
onnx_stage.flows.convert_flow once and calls convert_model(...) `--runs` times, each on a fresh registered version
of the demo digits MLP (MLflow keras flavor, as `make demo` registers it), so every run converts, validates,
benchmarks and registers (none takes the "already registered" shortcut). After each run it records the resident
memory (psutil RSS) of itself plus its live children (the Keras child is gone by then: each run kills its own),
and its thread and open-file counts. It prints them per run and

    rss after run 1, after run N, ratio: X   (target ≤ 1.10)

What grows, found with memray (native allocations still live after runs 3-7): Prefect 3.9.1 gives every flow run
called outside a client context its own SyncPrefectClient, each with a fresh `ssl.create_default_context()` (the CA
bundle parsed by OpenSSL, ~1.3 MiB of native memory), and keeps them reachable from its long-lived API log worker's
captured contexts. `--shared-client` holds one `prefect.context.SyncClientContext` across the runs, as a long-lived
runner calling the flow in-process can: every run then uses that client.

Setup, not measured: a real `mlflow server` and `prefect server` on 127.0.0.1 (deployments.servers) with their state
in a temp dir, the model trained and registered under N names in another child. `--tracemalloc` also prints the
Python allocation sites that grew most between run 1 and run N (slower: tracemalloc hooks every allocation).

`--stack` measures the worker the stack runs instead: the local stack (deployments/stack.py, free ports, a temp dir),
the N versions registered one at a time, each converted through webhook → Prefect trigger → process worker under the
warm engine (each flow run in its own process, as a process worker runs them). After each twin is complete and the
machine idle, it records the resident memory of the worker service's long-lived processes: the warm engine, the
Prefect worker, and the ready process waiting for the next run with its Keras child, and prints

    stack worker memory ratio (after run N / after run 1): X   (target ≤ 1.10)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
TARGET = 1.10


def child_prepare(stamp: str, runs: int, out: Path) -> None:
    """Train the demo MLP once, register its MLflow model under `runs` fresh names (version 1 each); with runs = 0,
    write only the run id."""
    import mlflow

    from onnx_stage.flows.train_demo import train_and_log
    from onnx_stage.tracking import use_experiment

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    use_experiment("worker-memory-bench")
    run_id, _ = train_and_log(epochs=5, seed=0)
    if not runs:  # --stack registers the versions itself, one at a time
        out.write_text(json.dumps({"run_id": run_id}))
        return
    names = [f"wm-mlp-{stamp}-{index}" for index in range(runs)]
    for name in names:
        mlflow.register_model(f"runs:/{run_id}/model", name)
    out.write_text(json.dumps(names))


def child_worker(names: list[str], overrides: list[str], trace: bool, shared_client: bool, out: Path) -> None:
    """The long-lived worker: convert every name in turn in this one process, recording memory after each."""
    import contextlib

    import psutil
    from prefect.context import SyncClientContext

    from onnx_stage.config import load_config
    from onnx_stage.flows.convert_flow import convert_model

    if trace:
        import tracemalloc
        tracemalloc.start(8)
    config, me, rows, first_snapshot, first_handles = load_config(None, overrides), psutil.Process(), [], None, None
    runner = contextlib.ExitStack()
    if shared_client:  # every flow run then takes this client instead of making its own
        runner.enter_context(SyncClientContext.get_or_create())
    for index, name in enumerate(names):
        started = time.perf_counter()
        twin = convert_model(model_name=name, version="1", config=config)
        if not twin.created:
            raise RuntimeError(f"{name} took the 'already registered' shortcut: the run converted nothing")
        seconds = time.perf_counter() - started
        time.sleep(0.5)  # the Keras child is killed at the end of a run and reaped on a thread: let it go
        children = me.children(recursive=True)
        rows.append({"run": index + 1, "seconds": seconds, "rss": me.memory_info().rss,
                     "children_rss": sum(_rss(child) for child in children), "children": len(children),
                     "threads": me.num_threads(), "open_files": me.num_fds(), **_rss_kinds()})
        print("WORKER " + json.dumps(rows[-1]), flush=True)
        if index == 0:
            first_handles = _handles()
            first_snapshot = tracemalloc.take_snapshot() if trace else None
    runner.close()
    growth = [f"{count:+d} {what}" for what, count in (_handles() - first_handles).items()]
    if trace:
        for stat in tracemalloc.take_snapshot().compare_to(first_snapshot, "traceback")[:10]:
            growth.append(f"{stat.size_diff / 1e6:+.2f} MB in {stat.count_diff:+d} blocks at "
                          + " < ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(stat.traceback[-4:])))
    out.write_text(json.dumps({"rows": rows, "growth": growth}))


def _rss_kinds() -> dict[str, int]:
    """This process's resident memory by kind (/proc/self/status, bytes): anonymous (heaps, arenas, stacks) and
    file-backed (libraries' pages touched so far); and glibc's view of its heap (mallinfo2): bytes in use in the
    arenas, free in them, and mapped on their own."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    kinds = {"rss_anon": int(fields["RssAnon"].split()[0]) << 10, "rss_file": int(fields["RssFile"].split()[0]) << 10}
    import ctypes

    from onnx_stage.memory import _libc  # glibc, the one the stage tunes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                         "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc = _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):  # not glibc, or older than 2.33
        return kinds
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    return {**kinds, "malloc_in_use": info.uordblks, "malloc_free": info.fordblks, "malloc_mapped": info.hblkhd}


def _handles() -> "Counter[str]":
    """The live threads (by name, numbers dropped) and open file descriptors (by target) of this process."""
    import re
    import threading
    from collections import Counter

    handles = Counter(f"thread {re.sub(r'[0-9]+', 'N', t.name)}" for t in threading.enumerate())
    for fd in Path("/proc/self/fd").iterdir():
        try:
            handles[f"fd {re.sub(r'[0-9]+', 'N', os.readlink(fd))}"] += 1
        except OSError:
            pass
    return handles


def _rss(process) -> int:
    import psutil

    try:
        return process.memory_info().rss
    except psutil.NoSuchProcess:
        return 0


def run_child(args: list[str], env: dict[str, str], log: Path, timeout: float, echo: bool = False) -> None:
    command = [sys.executable, str(Path(__file__).resolve()), *args]
    with log.open("w") as stream:
        process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=stream, text=True)
        for line in process.stdout:
            if echo and line.startswith("WORKER "):
                row = json.loads(line[7:])
                print(f"  run {row['run']:>2}: {row['seconds']:5.1f} s  rss {row['rss'] / 2**20:7.1f} MiB  "
                      f"(anonymous {row['rss_anon'] / 2**20:.1f}, files {row['rss_file'] / 2**20:.1f}; malloc in use "
                      f"{row.get('malloc_in_use', 0) / 2**20:.1f}, free {row.get('malloc_free', 0) / 2**20:.1f}, "
                      f"mapped {row.get('malloc_mapped', 0) / 2**20:.1f})  "
                      f"children {row['children']} ({row['children_rss'] / 2**20:.1f} MiB)  threads {row['threads']}  "
                      f"open files {row['open_files']}", flush=True)
            stream.write(line)
        if process.wait(timeout=timeout) != 0:
            raise RuntimeError(f"{args[0]} failed with exit code {process.returncode}; see {log}:\n"
                               + "\n".join(log.read_text().strip().splitlines()[-15:]))


def stack_worker(runs: int) -> int:
    """--stack: the local stack's worker converts `runs` fresh versions one after another; its memory after each."""
    import mlflow
    import psutil

    from time_to_twin import start_stack, wait_for_complete_twin, wait_until_idle

    began, home = time.perf_counter(), Path(tempfile.mkdtemp(prefix="worker-memory-stack-"))
    stack = start_stack("local", home)
    try:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
        stamp = datetime.now().strftime("%Y%m%d%H%M%S")
        run_child(["_prepare", stamp, "0", str(home / "names.json")], env, home / "prepare.log", 900)
        run_id = json.loads((home / "names.json").read_text())["run_id"]
        print(f"local stack up, digits MLP trained ({time.perf_counter() - began:.0f} s); {runs} versions registered "
              "one at a time, each converted by the stack's worker", flush=True)
        rows = []
        for index in range(runs):
            name = f"wm-stack-{stamp}-{index}"
            started = time.monotonic()
            mlflow.register_model(f"runs:/{run_id}/model", name)
            wait_for_complete_twin(name, started)
            seconds = time.monotonic() - started
            wait_until_idle()  # the run's process has ended and the next ready process has imported
            worker = psutil.Process(stack.running_pid("worker"))
            roles = {"engine": _rss(worker), "prefect worker": 0, "ready process": 0, "keras child": 0, "other": 0}
            for process in worker.children(recursive=True):
                command = " ".join(process.cmdline())
                role = ("prefect worker" if "worker start" in command else "ready process" if "--ready" in command
                        else "keras child" if "onnx_stage.keras_worker" in command else "other")
                roles[role] += _rss(process)
            rows.append(roles)
            print(f"  run {index + 1:>2}: twin after {seconds:5.1f} s; " + ", ".join(
                f"{role} {rss / 2**20:.0f} MiB" for role, rss in roles.items() if rss), flush=True)
    finally:
        stack.down()
    shutil.rmtree(home, ignore_errors=True)  # kept, with the services' logs, when the run failed
    totals = [sum(row.values()) for row in rows]
    ratio = totals[-1] / totals[0]
    print(f"\nworker service (engine + Prefect worker + ready process + its Keras child) after run 1: "
          f"{totals[0] / 2**20:.0f} MiB; after run {runs}: {totals[-1] / 2**20:.0f} MiB; max {max(totals) / 2**20:.0f} MiB")
    for role in rows[0]:
        print(f"  {role}: {rows[0][role] / 2**20:.0f} → {rows[-1][role] / 2**20:.0f} MiB")
    print(f"stack worker memory ratio (after run {runs} / after run 1): {ratio:.3f}  (target ≤ {TARGET:.2f})  "
          f"{'PASS' if ratio <= TARGET else 'FAIL'}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="conversions in a row (default 20)")
    parser.add_argument("--stack", action="store_true", help="the local stack's worker (warm engine) instead")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="config override for every run, e.g. benchmark.min_seconds=0.2 (repeatable)")
    parser.add_argument("--tracemalloc", action="store_true", help="print the allocation sites that grew most")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, server state)")
    parser.add_argument("--shared-client", action="store_true",
                        help="hold one Prefect client across the runs, as a long-lived runner can")
    args = parser.parse_args()
    if args.runs < 2:
        parser.error("--runs must be at least 2")
    if args.stack:
        return stack_worker(args.runs)

    from deployments.servers import mlflow_server, prefect_server

    began, work = time.perf_counter(), Path(tempfile.mkdtemp(prefix="worker-memory-"))
    print(f"worker memory benchmark ({os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f}; temp dir {work})",
          flush=True)
    try:
        with mlflow_server(work / "mlflow") as tracking_uri, prefect_server(work / "prefect") as api_url:
            env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PREFECT_API_URL": api_url,
                   "PREFECT_HOME": str(work / "prefect-client"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                   "ONNX_STAGE_HOME": str(work / "stage"), "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
            stamp = datetime.now().strftime("%Y%m%d%H%M%S")
            run_child(["_prepare", stamp, str(args.runs), str(work / "names.json")], env, work / "prepare.log", 900)
            print(f"servers up, digits MLP trained and registered under {args.runs} names "
                  f"({time.perf_counter() - began:.0f} s); one worker process converts them in a row"
                  + (f" with {' '.join(args.overrides)}" if args.overrides else ""), flush=True)
            run_child(["_worker", str(work / "names.json"), json.dumps(args.overrides), str(int(args.tracemalloc)),
                       str(int(args.shared_client)), str(work / "worker.json")], env, work / "worker.log",
                      600 + 300 * args.runs, echo=True)
            result = json.loads((work / "worker.json").read_text())
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    rows = result["rows"]
    first, last = rows[0], rows[-1]
    total = [row["rss"] + row["children_rss"] for row in rows]
    ratio = total[-1] / total[0]
    print(f"\nrss (process + children) after run 1: {total[0] / 2**20:.1f} MiB; after run {last['run']}: "
          f"{total[-1] / 2**20:.1f} MiB; peak after a run {max(total) / 2**20:.1f} MiB")
    print(f"threads {first['threads']} → {last['threads']}, open files {first['open_files']} → {last['open_files']}")
    for line in result["growth"]:
        print(f"  grew: {line}")
    print(f"worker memory ratio (after run {last['run']} / after run 1): {ratio:.3f}  (target ≤ {TARGET:.2f})  "
          f"{'PASS' if ratio <= TARGET else 'FAIL'}")
    print(f"load avg at end {os.getloadavg()[0]:.1f}; total {time.perf_counter() - began:.0f} s"
          + (f"; logs kept in {work}" if args.keep else ""))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    if sys.argv[1:2] == ["_prepare"]:
        child_prepare(sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))
    elif sys.argv[1:2] == ["_worker"]:
        child_worker(json.loads(Path(sys.argv[2]).read_text()), json.loads(sys.argv[3]), sys.argv[4] == "1",
                     sys.argv[5] == "1", Path(sys.argv[6]))
    else:
        try:
            sys.exit(main())
        except KeyboardInterrupt:
            sys.exit(130)
        except Exception as error:  # a failure to run is an error (non-zero); a missed target is not
            print(f"worker_memory: error: {type(error).__name__}: {error}", file=sys.stderr)
            sys.exit(1)
