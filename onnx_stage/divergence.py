"""Find the first Keras layer whose ONNX counterpart diverges.

Every intermediate ONNX tensor is exposed as a graph output; a Keras layer "agrees" when some ONNX tensor
holds the same values (up to an NHWC↔NCHW-style transpose, since converters change layouts). Layers
fused away by the converter (a Conv whose output only exists after the BatchNorm folded into it) have no
counterpart but agreeing descendants, so the culprit is the earliest layer that disagrees and has no
agreeing descendant.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort


@dataclass(frozen=True)
class KerasLayerOutput:
    name: str
    kind: str
    output: np.ndarray
    parents: list[str]


@dataclass(frozen=True)
class Divergence:
    layer: str
    kind: str
    last_agreeing: str | None
    layers_checked: int

    def describe(self) -> str:
        upstream = f"; the last agreeing layer upstream is {self.last_agreeing!r}" if self.last_agreeing else ""
        return f"first diverging Keras layer: {self.layer!r} ({self.kind}){upstream}"


def onnx_intermediate_values(onnx_path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    model = onnx.load(str(onnx_path))
    declared = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name and name not in declared:
                model.graph.output.append(onnx.ValueInfoProto(name=name))
                declared.add(name)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(v) for v in session.run(None, feed) if isinstance(v, np.ndarray)]


def locate_divergence(layers: list[KerasLayerOutput], onnx_values: list[np.ndarray], atol: float,
                      rtol: float) -> Divergence | None:
    by_size: dict[int, list[np.ndarray]] = {}
    for value in onnx_values:
        by_size.setdefault(value.size, []).append(value.astype(np.float64))
    agrees = {layer.name: any(_same_values(layer.output, candidate, atol, rtol)
                              for candidate in by_size.get(layer.output.size, []))
              for layer in layers}
    descendants = _descendants(layers)
    for layer in layers:
        if not agrees[layer.name] and not any(agrees[d] for d in descendants[layer.name]):
            ancestors = [other.name for other in layers if layer.name in descendants[other.name]]
            agreeing = [name for name in ancestors if agrees[name]]
            return Divergence(layer.name, layer.kind, agreeing[-1] if agreeing else None, len(layers))
    return None


def _same_values(expected: np.ndarray, candidate: np.ndarray, atol: float, rtol: float) -> bool:
    expected = expected.astype(np.float64)
    tolerance = max(atol, rtol * float(np.abs(expected).max(initial=0.0)))
    for arrangement in _arrangements(candidate, expected.shape):
        if np.all(np.abs(arrangement - expected) <= tolerance):
            return True
    return False


def _arrangements(candidate: np.ndarray, shape: tuple[int, ...]):
    if candidate.shape == shape:
        yield candidate
    if candidate.ndim == len(shape) and candidate.ndim >= 3:
        for order in itertools.permutations(range(1, candidate.ndim)):
            permuted = (0, *order)
            if tuple(candidate.shape[i] for i in permuted) == shape and permuted != tuple(range(candidate.ndim)):
                yield candidate.transpose(permuted)
    if candidate.shape != shape:
        yield candidate.reshape(shape)


def _descendants(layers: list[KerasLayerOutput]) -> dict[str, set[str]]:
    children: dict[str, set[str]] = {layer.name: set() for layer in layers}
    for layer in layers:
        for parent in layer.parents:
            children.setdefault(parent, set()).add(layer.name)
    result: dict[str, set[str]] = {}
    for layer in reversed(layers):  # topological order reversed: children are done first
        result[layer.name] = set().union(*({c} | result.get(c, set()) for c in children[layer.name]))
    return result
