"""Keras coverage: which zoo models (model_zoo/zoo.py) convert, pass parity, by which route, how fast, in how much
memory.

Run from the repo root:  .venv/bin/python benchmarks/coverage.py [--models a,b] [--ci-only] [--user-models]
                         [--set convert.routes=[...]]

Per model, a fresh Keras child (so one model's memory or crash cannot colour the next) loads the saved .keras
file, converts it with the stage's convert code (routes in config order) and validates it with the stage's
parity check (default tolerances, batch 1 and 16). One line per model:

    name  converted  parity  route  conversion seconds  peak RSS of the child while converting
          (vs the budget 3 × weights + 1 GiB)  failure reason

then `converted: N/M, parity: N/M`. keras.applications models use random weights: nothing is downloaded.

`--user-models` measures the models users really bring instead (model_zoo/user_models.py: dynamic image sizes,
preprocessing layers, stateful RNNs, resize modes), each against its expected outcome: converted with parity, or
refused before conversion naming the layer. The summary line then also counts `as expected: N/M`.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from onnx_stage.config import StageConfig, load_config  # noqa: E402
from onnx_stage.errors import StageError  # noqa: E402
from onnx_stage.keras_worker import KerasWorker, WorkerError  # noqa: E402
from model_zoo.zoo import CUSTOM_LAYERS_MODULE, ZOO  # noqa: E402
from model_zoo.user_models import USER_MODELS  # noqa: E402
from onnx_stage.tasks.convert import convert_source  # noqa: E402
from onnx_stage.tasks.load import load_source  # noqa: E402
from onnx_stage.records import ModelRef  # noqa: E402
from onnx_stage.tasks.validate import check_parity  # noqa: E402

GIB = 1024**3


def memory_budget(weights_bytes: int) -> int:
    return 3 * weights_bytes + GIB


def measure(name: str, model_file: Path, config: StageConfig, work_dir: Path) -> dict:
    row = {"name": name, "converted": False, "parity": False, "route": "-", "seconds": None, "peak": None,
           "weights": None, "reason": ""}
    modules = [CUSTOM_LAYERS_MODULE] if name in ZOO and ZOO[name].custom_objects else []
    try:
        with KerasWorker(config.convert.timeout_seconds) as worker:
            source = load_source(ModelRef(name=name, path=str(model_file)), worker, work_dir, modules)
            row["weights"] = source.weights_bytes
            converted = convert_source(source, worker, config.convert, work_dir / "onnx")
            row.update(converted=True, route=converted.route, seconds=converted.conversion_seconds,
                       peak=converted.conversion_peak_rss_bytes)
            check_parity(source, converted, worker, config.validation, work_dir)
            row["parity"] = True
    except (StageError, WorkerError) as error:
        row["reason"] = str(error)
    return row


def render(row: dict) -> str:
    seconds = f"{row['seconds']:6.1f}s" if row["seconds"] is not None else "      -"
    memory = "peak -"
    if row["peak"] is not None and row["weights"] is not None:
        budget = memory_budget(row["weights"])
        verdict = "within" if row["peak"] <= budget else "OVER"
        memory = (f"peak {row['peak'] / GIB:5.2f} GiB ({verdict} 3×{row['weights'] / GIB:.2f}+1 = "
                  f"{budget / GIB:.2f} GiB)")
    return (f"{row['name']:24} converted={'yes' if row['converted'] else 'NO ':3} "
            f"parity={'pass' if row['parity'] else 'FAIL'} route={row['route']:13} {seconds}  {memory}"
            + (f"  reason: {row['reason'][:400]}" if row["reason"] else ""))


def as_expected(row: dict, expected: str) -> bool:
    """user_models' expectation met: `converts` with parity, or `refused: <Layer>` with a refusal naming the layer (before
    conversion, or at load for a model taking strings) and nothing converted."""
    if expected == "converts":
        return row["parity"]
    if expected == "keras cannot load":
        return "cannot load" in row["reason"]
    layer = expected.removeprefix("refused: ")
    return not row["converted"] and layer in row["reason"] and ("refused" in row["reason"] or "split" in row["reason"])


def measure_user_models(names: list[str], config: StageConfig, scratch: Path) -> list[dict]:
    """Each user model at its own opset, against its expected outcome; one line each."""
    rows = []
    for name in names:
        model = USER_MODELS[name]
        work_dir = scratch / name
        work_dir.mkdir()
        opset_config = config.model_copy(update={"convert": config.convert.model_copy(update={"opset": model.opset})})
        row = measure(name, scratch / "models" / f"{name}.keras", opset_config, work_dir)
        row["as_expected"] = as_expected(row, model.expected)
        rows.append(row)
        print(f"{'ok ' if row['as_expected'] else 'BAD'} expected {model.expected:28} {render(row)}", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated zoo names (default: the whole zoo)")
    parser.add_argument("--ci-only", action="store_true", help="only the models the test suite converts")
    parser.add_argument("--user-models", action="store_true",
                        help="the models users really bring (model_zoo/user_models.py) instead of the zoo")
    parser.add_argument("--set", action="append", default=[], dest="overrides", help="config override")
    args = parser.parse_args()
    catalogue = USER_MODELS if args.user_models else ZOO
    names = args.models.split(",") if args.models else [n for n, m in catalogue.items() if m.in_ci or not args.ci_only]
    config = load_config(overrides=args.overrides)
    rows = []
    with tempfile.TemporaryDirectory(prefix="coverage-") as scratch:
        models = Path(scratch) / "models"
        subprocess.run([sys.executable, "-m", "model_zoo.zoo", str(models), *names], check=True,
                       stdout=subprocess.DEVNULL)
        if args.user_models:
            rows = measure_user_models(names, config, Path(scratch))
            print(f"user models: as expected: {sum(r['as_expected'] for r in rows)}/{len(rows)}, "
                  f"converted: {sum(r['converted'] for r in rows)}/{len(rows)}, "
                  f"parity: {sum(r['parity'] for r in rows)}/{len(rows)}")
            return 0
        for name in names:
            work_dir = Path(scratch) / name
            work_dir.mkdir()
            rows.append(measure(name, models / f"{name}.keras", config, work_dir))
            print(render(rows[-1]), flush=True)
    print(f"converted: {sum(r['converted'] for r in rows)}/{len(rows)}, parity: {sum(r['parity'] for r in rows)}/{len(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
