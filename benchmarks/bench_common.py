"""Shared pieces of the ratio benchmarks (onnx_vs_keras.py, int8_speedup.py, gflops.py); not a script itself.

Models come from model_zoo/zoo.py (its layer-family models and `application(...)` builders, random weights:
nothing is downloaded). They are built and saved in a child process, then loaded, converted and timed with the
stage's own code: `load_source` / `convert_source` through the real Keras child (`KerasWorker`), onnxruntime
sessions from `onnx_stage.sessions`, timing loops from `onnx_stage.timing`.

Timing on a shared machine: every contender is warmed up, then all contenders are timed in rounds (balanced orders:
each contender runs after every other equally often) so that load from other processes hits them alike; ratios are
ratios of medians.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnx_stage.config import ConvertConfig  # noqa: E402
from onnx_stage.keras_worker import KerasWorker  # noqa: E402
from onnx_stage.parity import generated_inputs  # noqa: E402
from onnx_stage.sessions import SessionOptionsDict, open_session  # noqa: E402
from onnx_stage.timing import balanced_orders, time_calls  # noqa: E402
from onnx_stage.tasks.convert import convert_source  # noqa: E402
from onnx_stage.tasks.load import load_source  # noqa: E402
from onnx_stage.records import ModelRef, OnnxArtifacts, SourceModel  # noqa: E402

# keras.applications at a given input size (zoo.application builders); everything else is a zoo name as is
APPLICATION_SIZES: dict[str, tuple[str, dict]] = {
    "MobileNetV2_224": ("MobileNetV2", {}),
    "ResNet50_128": ("ResNet50", {"input_shape": (128, 128, 3)}),
    "ResNet50_224": ("ResNet50", {}),
    "DenseNet121_128": ("DenseNet121", {"input_shape": (128, 128, 3)}),
}

_BUILD = """
import json, sys
from pathlib import Path
from model_zoo.zoo import ZOO, application
out, specs = Path(sys.argv[1]), json.loads(sys.argv[2])
for name, spec in specs.items():
    model = application(spec[0], **{k: tuple(v) if isinstance(v, list) else v for k, v in spec[1].items()})() \\
        if spec else ZOO[name].build()
    model.save(out / f"{name}.keras")
"""


def run_keras_script(script: str, *args: str, quiet: bool = True) -> None:
    """Run a Python script that uses Keras in a child process (TensorFlow stays out of this one), from the repo root."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    subprocess.run([sys.executable, "-c", script, *args], check=True, cwd=ROOT, env=env,
                   stdout=subprocess.DEVNULL if quiet else None)


def build_models(out_dir: Path, names: list[str]) -> dict[str, Path]:
    """Build and save each model as out_dir/NAME.keras in one child process (random weights)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    run_keras_script(_BUILD, str(out_dir), json.dumps({name: APPLICATION_SIZES.get(name) for name in names}))
    return {name: out_dir / f"{name}.keras" for name in names}


def load_and_convert(worker: KerasWorker, name: str, model_file: Path, work_dir: Path,
                     routes: list[str] | None = None) -> tuple[SourceModel, OnnxArtifacts]:
    """What the stage does in load + convert (default routes unless given), on a model file."""
    source = load_source(ModelRef(name=name, path=str(model_file)), worker, work_dir)
    config = ConvertConfig(routes=routes) if routes else ConvertConfig()
    return source, convert_source(source, worker, config, work_dir / ("onnx-" + "-".join(routes or ["stage"])))


def make_inputs(source: SourceModel, worker: KerasWorker, batch_size: int, seed: int = 0) -> list[np.ndarray]:
    """Generated inputs as the stage's benchmark makes them (plausible ranges from the model's first layers)."""
    hints = worker.call("input_hints")
    return generated_inputs(source.inputs, batch_size, np.random.default_rng(seed), example=None, hints=hints)


Timer = Callable[[int, float], list[float]]  # (min_runs, min_seconds) -> seconds per call


def ort_timer(onnx_path: Path, options: SessionOptionsDict, inputs: list[np.ndarray]) -> Timer:
    session = open_session(onnx_path, options)
    feed = dict(zip([i.name for i in session.get_inputs()], inputs))
    call = lambda: session.run(None, feed)  # noqa: E731
    return lambda runs, seconds: time_calls(call, 0, runs, seconds)


def keras_timer(worker: KerasWorker, inputs: list[np.ndarray]) -> Timer:
    """Compiled Keras (predict_on_batch) timed in the Keras child; only the calls are timed, not the pipe."""
    return lambda runs, seconds: worker.call("time_predict", inputs=inputs, warmup_runs=0, min_runs=runs,
                                             min_seconds=seconds)


def time_rounds(timers: dict[str, Timer], seconds_each: float, rounds: int = 5,
                warmup_seconds: float = 0.3) -> dict[str, list[list[float]]]:
    """Per contender, per round, the durations of its calls; contenders alternate in balanced orders (each runs
    after every other equally often: onnx_stage.timing.balanced_orders), at least `rounds` rounds, a whole number
    of the design. Warm-up: at least 2 calls and warmup_seconds per contender."""
    for timer in timers.values():
        timer(2, warmup_seconds)
    names = list(timers)
    orders = balanced_orders(len(names))
    rounds = -(-rounds // len(orders)) * len(orders)
    durations: dict[str, list[list[float]]] = {name: [] for name in names}
    for round_index in range(rounds):
        for index in orders[round_index % len(orders)]:
            durations[names[index]].append(timers[names[index]](1, seconds_each / rounds))
    return durations


def median_ms(rounds: list[list[float]]) -> float:
    return float(np.median([d for r in rounds for d in r])) * 1e3


def ratio_with_spread(slow: list[list[float]], fast: list[list[float]]) -> tuple[float, float, float]:
    """Ratio of overall medians (slow / fast) and the lowest and highest ratio of per-round medians."""
    per_round = [np.median(s) / np.median(f) for s, f in zip(slow, fast)]
    overall = float(np.median([d for r in slow for d in r]) / np.median([d for r in fast for d in r]))
    return overall, float(min(per_round)), float(max(per_round))


def geomean(values: list[float]) -> float:
    return float(math.exp(np.mean(np.log(values)))) if values else float("nan")


def machine_line() -> str:
    load = os.getloadavg()
    return (f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} "
            f"(1/5/15 min) — shared with other processes: numbers are noisy; medians of interleaved rounds")


@contextmanager
def stopwatch(label: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    print(f"  ({label}: {time.perf_counter() - started:.0f} s)", flush=True)


def cpu_flags() -> dict:
    """CPU model name, flags and BogoMIPS from /proc/cpuinfo (first processor)."""
    info: dict[str, str] = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    return {"model": info.get("model name", "?"), "flags": set(info.get("flags", "").split()),
            "bogomips": float(info.get("bogomips", "nan")), "family": info.get("cpu family", "?"),
            "model_number": info.get("model", "?"), "vendor": info.get("vendor_id", "?")}


def parse_args(doc: str, models: list[str], seconds: float) -> tuple[list[str], float]:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--models", default=",".join(models), help="comma-separated model names")
    parser.add_argument("--seconds", type=float, default=seconds, help="timing seconds per contender and batch size")
    args = parser.parse_args()
    return args.models.split(","), args.seconds


ModelBenchmark = Callable[[KerasWorker, str, Path, Path, float], dict]
ModelBuilder = Callable[[Path, list[str]], dict[str, Path]]  # (out_dir, names) -> model file per name


def run_models(names: list[str], benchmark: ModelBenchmark, render: Callable[[dict], list[str]],
               seconds: float, build: ModelBuilder = build_models) -> list[dict]:
    """Build the models (`build`, random weights by default), then benchmark and print each with one Keras child;
    a failing model is reported, skipped."""
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch, KerasWorker(900) as worker:
        with stopwatch(f"built {len(names)} models"):
            files = build(Path(scratch) / "models", names)
        for name in names:
            try:
                with stopwatch(name):
                    results.append(benchmark(worker, name, files[name], Path(scratch) / name, seconds))
                    print("\n".join(render(results[-1])), flush=True)
            except Exception as error:  # one broken model must not hide the others' numbers
                print(f"{name}: FAILED {type(error).__name__}: {str(error)[:300]}", flush=True)
    return results
