"""Graph optimisation of the converted model: the gate that tries the rewrite steps (onnx_stage/graph_passes/, in
PASSES) and keeps each only if it proves itself.

A step is kept only if the model it makes computes the unoptimised model's outputs on every validation case
(`MAX_ABS`/`MAX_REL`, far inside validation's tolerances) and, when `convert.graph_optimization_seconds` > 0, is
measured faster in interleaved timing; the result says which steps were kept and why the others were not. Without
timing, all steps are applied together and checked once (one onnxruntime session, MobileNetV2: ~0.4 s less); only
when that model fails are the steps tried one by one to find the step to refuse.
"""
from __future__ import annotations

import copy
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnx_stage.graph_passes import PASSES
from onnx_stage.parity import close_enough
from onnx_stage.sessions import open_session
from onnx_stage.timing import time_interleaved

# ONNX-vs-ONNX: an exact rewrite changes float rounding only (LayerNormalization sums in another order)
MAX_ABS, MAX_REL = 1e-5, 1e-4


def _uses_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


Outputs = list[list[np.ndarray]]  # per case, per model output


@dataclass
class GraphOptimization:
    """What optimize_graph did: the steps kept as "step(rewrites)", the refused ones with why, and the outputs of
    the model it left (per case of the `cases` it was given; None when it ran none: no steps, external data)."""
    kept: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    outputs: Outputs | None = None


def parity_refusal(session: ort.InferenceSession, cases: list[list[np.ndarray]],
                   expected: Outputs) -> tuple[str | None, Outputs]:
    """(None, its outputs) when the candidate model's session computes `expected` (the unoptimised model's
    outputs) on every case within MAX_ABS/MAX_REL; else (why not, []): a case it fails to run is a refusal."""
    outputs = []
    try:
        names = [i.name for i in session.get_inputs()]
        for arrays, wanted in zip(cases, expected):
            got = session.run(None, dict(zip(names, arrays)))
            for output, a, b in zip(session.get_outputs(), wanted, got):
                if a.shape != b.shape or a.dtype != b.dtype or not close_enough(a, b, MAX_ABS, MAX_REL):
                    return f"changes output {output.name!r} (batch {len(arrays[0])})", []
            outputs.append(got)
    except Exception as error:  # noqa: BLE001 -- onnxruntime's pybind errors: the step is refused, saying why
        return f"onnxruntime refuses the rewritten model: {str(error).strip().splitlines()[0][:160]}", []
    return None, outputs


def speed_ratio(baseline: ort.InferenceSession, candidate: ort.InferenceSession, timing_cases: list[list[np.ndarray]],
                seconds: float) -> float:
    """Geometric mean over timing_cases of median(candidate) / median(baseline), timed interleaved with default
    session options (below 1: the candidate is faster), in about `seconds`: a case after the first whose one call
    takes more than an eighth of the budget is left out (MobileNetV2 at batch 16: the step is judged at batch 1)."""
    sessions = {"baseline": baseline, "candidate": candidate}
    logs: list[float] = []
    for arrays in timing_cases:
        runners = {label: (lambda s, f: lambda: s.run(None, f))(session, dict(zip(
            [i.name for i in session.get_inputs()], arrays))) for label, session in sessions.items()}
        started = time.perf_counter()
        runners["baseline"]()
        call = time.perf_counter() - started
        if logs and call > seconds / 8:
            continue
        budget = seconds / len(timing_cases) / 2  # per contender
        runs = int(max(3, min(10, budget / max(call, 1e-6))))
        timings = time_interleaved(runners, 1, runs, budget)
        logs.append(float(np.log(np.median(timings["candidate"]) / np.median(timings["baseline"]))))
    return float(np.exp(np.mean(logs)))


def timing_cases(cases: list[list[np.ndarray]], largest_batch: int = 32) -> list[list[np.ndarray]]:
    """The smallest-batch case and the largest case of at most `largest_batch` rows (one case if they coincide)."""
    by_batch = sorted(cases, key=lambda arrays: len(arrays[0]))
    small = by_batch[0]
    large = max((c for c in by_batch if len(c[0]) <= largest_batch), key=lambda c: len(c[0]), default=small)
    return [small] if large is small else [small, large]


def optimize_graph(onnx_path: Path, steps: list[str], cases: list[list[np.ndarray]], seconds: float,
                   ) -> GraphOptimization:
    """Apply `steps` (names in PASSES) to the model at onnx_path, keeping each only if the model it makes passes
    parity_refusal against the unoptimised model's outputs on `cases` and, when `seconds` > 0, speed_ratio < 1
    against the model kept so far (seconds = 0: the steps stand on benchmarks/onnx_vs_keras.py's measurements); the
    result replaces onnx_path. Its outputs on `cases` (a default onnxruntime session) come back with it: validation
    compares them with the source's instead of running the same file again (MobileNetV2: ~0.5 s).

    Models with external data (> 2 GB) are left as they are."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    if not steps:
        return GraphOptimization()
    if _uses_external_data(model):
        return GraphOptimization(refused={step: "model has external data: not rewritten" for step in steps})
    work = onnx_path.parent / "graph_optimization"
    work.mkdir(exist_ok=True)
    try:
        baseline_session = open_session(onnx_path)
        names = [i.name for i in baseline_session.get_inputs()]
        expected = [baseline_session.run(None, dict(zip(names, arrays))) for arrays in cases]
        if seconds <= 0:
            combined, kept, refused = _rewritten(model, steps)
            if not kept:
                return GraphOptimization([], refused, expected)
            reason, _, outputs = _refusal(combined, work / "combined.onnx", cases, expected)
            if reason is None:
                shutil.copyfile(work / "combined.onnx", onnx_path)
                return GraphOptimization(kept, refused, outputs)
        return _one_by_one(model, onnx_path, steps, cases, expected, baseline_session, seconds, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _rewritten(model: onnx.ModelProto, steps: list[str]) -> tuple[onnx.ModelProto, list[str], dict[str, str]]:
    """The model with every step applied in order (a step that raises is refused and undone), the steps that
    rewrote something as "step(rewrites)", and the refused ones with why."""
    kept, refused = [], {}
    for step in steps:
        candidate = copy.deepcopy(model)
        try:
            rewrites = PASSES[step](candidate)
        except Exception as error:  # noqa: BLE001 -- a pass that cannot handle this graph is a refusal, not a failure
            refused[step] = f"{type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}"
            continue
        if not rewrites:
            refused[step] = "nothing to rewrite"
            continue
        kept.append(f"{step}({rewrites})")
        model = candidate
    return model, kept, refused


def _refusal(candidate: onnx.ModelProto, path: Path, cases: list[list[np.ndarray]], expected: Outputs,
             ) -> tuple[str | None, ort.InferenceSession | None, Outputs]:
    """Why the candidate model may not replace the unoptimised one (None: it may), its session and its outputs on
    `cases`. Saves it at `path`."""
    try:
        onnx.checker.check_model(candidate)
    except Exception as error:  # noqa: BLE001 -- a rewrite that breaks the model is a refusal, not a failure
        return f"{type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}", None, []
    onnx.save(candidate, str(path))
    try:
        session = open_session(path)
    except Exception as error:  # noqa: BLE001 -- onnxruntime's pybind errors: the step is refused, saying why
        return f"onnxruntime refuses the rewritten model: {str(error).strip().splitlines()[0][:160]}", None, []
    reason, outputs = parity_refusal(session, cases, expected)
    return reason, session, outputs


def _one_by_one(model: onnx.ModelProto, onnx_path: Path, steps: list[str], cases: list[list[np.ndarray]],
                expected: Outputs, baseline_session: ort.InferenceSession, seconds: float,
                work: Path) -> GraphOptimization:
    """Each step on the model kept so far, kept only if it passes _refusal (and, seconds > 0, is faster)."""
    kept, refused, baseline, outputs = [], {}, onnx_path, expected
    for step in steps:
        candidate, rewritten, refusals = _rewritten(model, [step])
        if not rewritten:
            refused.update(refusals)
            continue
        path = work / f"{step}.onnx"
        reason, session, candidate_outputs = _refusal(candidate, path, cases, expected)
        if reason is None and seconds > 0 and (
                ratio := speed_ratio(baseline_session, session, timing_cases(cases), seconds)) >= 1.0:
            reason = f"not faster ({ratio:.3f}x the time)"
        if reason is not None:
            refused[step] = reason
            continue
        kept.extend(rewritten)
        model, baseline, baseline_session, outputs = candidate, path, session, candidate_outputs
    if kept:
        shutil.copyfile(baseline, onnx_path)
    return GraphOptimization(kept, refused, outputs)
