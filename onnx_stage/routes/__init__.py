"""Converter routes, one small module each, registered in ROUTES (name → module), and the walk through them.

A route turns a loaded source model into an ONNX ModelProto with a dynamic batch dimension. Adding a route: write
a module with `convert(model, opset) -> onnx.ModelProto` and `versions() -> dict`, and list it here. A route's
module is imported when it is first used, so a child process only imports the converters (and frameworks) its
source needs: a scikit-learn source never imports TensorFlow. Used only in the child process.
"""
from __future__ import annotations

import ctypes
import importlib
import re
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import onnx
import onnxruntime as ort
from onnx import helper

from onnx_stage.onnx_files import graph_inputs, save_onnx

ROUTES: dict[str, str] = {
    "onnxmltools": "onnx_stage.routes.onnxmltools_route",
    "keras_export": "onnx_stage.routes.keras_export",
    "tf2onnx": "onnx_stage.routes.tf2onnx_route",
    "tf2onnx_lean": "onnx_stage.routes.tf2onnx_lean",
    "tf2onnx_saved_model": "onnx_stage.routes.tf2onnx_saved_model",
    "skl2onnx": "onnx_stage.routes.skl2onnx_route",
    "onnxmltools_lightgbm": "onnx_stage.routes.lightgbm_route",
    "onnxmltools_xgboost": "onnx_stage.routes.xgboost_route",
}


def route(name: str) -> ModuleType:
    """The route's module: a name in ROUTES, or the dotted path of a module with the same two functions."""
    return importlib.import_module(ROUTES.get(name, name))


def crash_marker(onnx_path: str) -> Path:
    """The file that names the routes tried, one a line, the last the one running: if a route kills the child (a
    segfault or abort inside a converter), the parent reads there which one it was (tasks/convert.py), reports it and
    goes on with the next. Appended to, never truncated, so a child killed mid-write still names a route."""
    return Path(f"{onnx_path}.route")


def convert_first_working(model: Any, routes: list[str], opset: int, onnx_path: str,
                          input_names: list[str], output_names: list[str]) -> dict[str, Any]:
    """Try the routes in order; the first whose model passes onnx.checker and loads in onnxruntime wins.

    The ONNX model's inputs and outputs carry the source's names, in the source's order (`input_names`,
    `output_names`): what validation pairs and what registry consumers send and read.

    Reports the child's peak resident memory during the conversion (the kernel's high-water mark, reset first).
    """
    failures: dict[str, str] = {}
    _reset_peak_rss()
    marker = crash_marker(onnx_path)
    marker.unlink(missing_ok=True)
    for name in routes:
        started = time.perf_counter()
        with marker.open("a") as names:
            names.write(name + "\n")
        try:
            opset_used = _convert_with(name, model, opset, input_names, output_names, onnx_path)
        except Exception as error:
            failures[name] = one_line(error)
            continue
        marker.unlink()
        return {"route": name, "failures": failures, "seconds": time.perf_counter() - started, "opset": opset_used,
                "route_versions": route(name).versions(), "peak_rss_bytes": _peak_rss_bytes()}
    marker.unlink(missing_ok=True)
    raise RuntimeError("no converter route worked: " + "; ".join(f"{r}: {m}" for r, m in failures.items()))


def _convert_with(name: str, model: Any, opset: int, input_names: list[str], output_names: list[str],
                  onnx_path: str) -> int:
    """Convert, save, then check from the file: the in-memory proto is freed before onnxruntime loads a copy.

    Returns the model's opset: a route may stay below the one asked for (onnxmltools' tree converters stop at 15)."""
    proto = route(name).convert(model, opset)
    _name_dynamic_batch(proto)
    name_inputs(proto, input_names)
    _name_outputs(proto, output_names)
    opset_used = next(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))
    save_onnx(proto, Path(onnx_path))
    del proto
    onnx.checker.check_model(onnx_path)
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_prepacking", "1")  # a load check needs no packed copy
    ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    return opset_used


def _reset_peak_rss() -> None:
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand back what loading freed, or it counts towards the peak
    Path("/proc/self/clear_refs").write_text("5")  # "5" resets VmHWM to the current RSS


def _peak_rss_bytes() -> int:
    peak_kib = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)
    return int(peak_kib) * 1024


def one_line(error: Exception) -> str:
    first_line = next(iter(str(error).strip().splitlines()), "")
    return f"{type(error).__name__}: {first_line[:300]}"


def name_inputs(proto: onnx.ModelProto, names: list[str]) -> None:
    """Graph inputs in the source's order under the source's names, e.g. `pixels` where tf2onnx says `pixels:0`.

    An input is matched by name without TensorFlow's `:0` port suffix, else by position. A renamed input feeds its
    old name through an Identity node (onnxruntime removes it), so nodes and subgraphs that read the old name,
    such as a recurrent loop's body, stay untouched.

    Raises:
        ValueError: the graph has another number of inputs than the source, or a new name is taken inside it.
    """
    weights = {tensor.name for tensor in proto.graph.initializer}
    inputs = graph_inputs(proto.graph)
    if len(inputs) != len(names):
        raise ValueError(f"the ONNX graph has {len(inputs)} inputs, the source {len(names)} ({', '.join(names)})")
    by_stem = {value.name.removesuffix(":0"): value for value in inputs}
    ordered = [by_stem[name] for name in names] if set(by_stem) == set(names) else inputs
    taken = {name for node in proto.graph.node for name in node.output} | weights
    renames = []
    for value, new_name in zip(ordered, names):
        if value.name == new_name:
            continue
        if new_name in taken:
            raise ValueError(f"input name {new_name!r} is already a tensor inside the ONNX graph")
        renames.append(helper.make_node("Identity", [new_name], [value.name], name=f"{new_name}/rename"))
        value.name = new_name
    if renames:
        nodes = renames + [onnx.NodeProto.FromString(node.SerializeToString()) for node in proto.graph.node]
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
    reorder_values(proto.graph.input, names + [v.name for v in proto.graph.input if v.name in weights])


def _name_outputs(proto: onnx.ModelProto, names: list[str]) -> None:
    """Outputs in the source's order under the source's names (what validation pairs and consumers read).

    Converters that already use the source's names may order them differently (tf2onnx sorts a signature's
    outputs): those are reordered. Others name them output_1 or Identity:0: those are renamed in order."""
    if {output.name for output in proto.graph.output} == set(names):
        reorder_values(proto.graph.output, names)
        return
    taken = {name for node in proto.graph.node for name in node.output}
    for output, new_name in zip(proto.graph.output, names):
        if new_name in taken or output.name == new_name:
            continue
        for node in proto.graph.node:
            node.output[:] = [new_name if n == output.name else n for n in node.output]
            node.input[:] = [new_name if n == output.name else n for n in node.input]
        output.name = new_name


def reorder_values(values: Any, names: list[str]) -> None:
    """Put a graph's inputs or outputs (a repeated ValueInfoProto field) in the order of `names`."""
    by_name = {value.name: value for value in values}
    ordered = [onnx.ValueInfoProto() for _ in names]
    for copy, name in zip(ordered, names):
        copy.CopyFrom(by_name[name])
    del values[:]
    values.extend(ordered)


def _name_dynamic_batch(proto: onnx.ModelProto) -> None:
    for value in [*proto.graph.input, *proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"
