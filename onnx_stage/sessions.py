"""onnxruntime sessions built from the same option dict the MLflow onnx flavor serves with.

mlflow.onnx reads `onnx_session_options` (intra/inter_op_num_threads, execution_mode, graph_optimization_level)
when a consumer loads the model; building our sessions from that dict means validation, benchmark and serving
run the model the same way.
"""
from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort

# What the twin is registered with: a consumer's onnxruntime uses CUDA where its build has it, else the CPU
# (MLflow's onnx flavor keeps the available ones in this order). Validated here on the CPU provider only.
PROVIDERS = ["CUDAExecutionProvider", "CPUExecutionProvider"]
LOCAL_PROVIDERS = ["CPUExecutionProvider"]
SessionOptionsDict = dict[str, int | str]


def open_session(onnx_path: Path, options: SessionOptionsDict | None = None) -> ort.InferenceSession:
    session_options = ort.SessionOptions()
    for key in ("intra_op_num_threads", "inter_op_num_threads"):
        if key in (options or {}):
            setattr(session_options, key, int(options[key]))
    if "execution_mode" in (options or {}):
        session_options.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if options["execution_mode"] == "parallel"
                                          else ort.ExecutionMode.ORT_SEQUENTIAL)
    if "graph_optimization_level" in (options or {}):
        session_options.graph_optimization_level = ort.GraphOptimizationLevel(int(options["graph_optimization_level"]))
    return ort.InferenceSession(str(onnx_path), sess_options=session_options, providers=LOCAL_PROVIDERS)


def tuning_candidates(thread_counts: bool = False) -> list[SessionOptionsDict]:
    """Session options the benchmark screens against the default session (which it always measures).

    Without `thread_counts`, only options that mean the same on every machine: graph optimisation level and
    execution mode. A thread count measured here would bind a consumer on another machine to this one's cores."""
    levels = [ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED.value, ort.GraphOptimizationLevel.ORT_ENABLE_ALL.value]
    if thread_counts:
        cores = os.cpu_count() or 1
        candidates = [{"graph_optimization_level": level, "intra_op_num_threads": count, "execution_mode": "sequential"}
                      for level in levels for count in sorted({1, cores})]
        default = {"graph_optimization_level": levels[-1], "intra_op_num_threads": cores, "execution_mode": "sequential"}
    else:
        candidates = [{"graph_optimization_level": level, "execution_mode": mode}
                      for level in levels for mode in ("sequential", "parallel")]
        default = {"graph_optimization_level": levels[-1], "execution_mode": "sequential"}
    return [c for c in candidates if c != default]
