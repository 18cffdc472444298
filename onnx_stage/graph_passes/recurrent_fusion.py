"""The `recurrent_fusion` step: a tf2onnx while loop (once loop_simplification has run) whose body is exactly a Keras 3
GRU cell (reset_after) or SimpleRNN cell, run over every step of its input from a zero counter, becomes one ONNX GRU
(linear_before_reset=1) or RNN node.
"""
from __future__ import annotations

from itertools import permutations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_stage.graph_passes.graph_index import Graph, folded, remove_dead_nodes
from onnx_stage.graph_passes.loop_simplification import simplify_loops


class _Body:
    """Lookups in a loop body: producers, constants (its own or the outer graph's, folded)."""

    def __init__(self, graph: onnx.GraphProto, body: onnx.GraphProto) -> None:
        self.graph, self.body = graph, body
        self.producer = {o: n for n in body.node for o in n.output}
        self.constants = {t.name: numpy_helper.to_array(t) for t in body.initializer}

    def made_by(self, name: str, op_type: str) -> onnx.NodeProto | None:
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    def const(self, name: str) -> np.ndarray | None:
        if name in self.constants:
            return self.constants[name]
        return None if name in self.producer else folded(self.graph, name)


def _match_gru_cell(b: _Body, h: str, new_h: str) -> dict | None:
    """Keras 3's GRU cell (reset_after=True) as tf2onnx writes it, after loop_simplification:
    h' = z*h + (1-z)*n, z = σ(xz + hz), r = σ(xr + hr), n = tanh(xh + r*hh), [xz xr xh] = Split(step input),
    [hz hr hh] = Slice(h @ R + rb). Returns {"x": step input, "R": ..., "rb": ..., "nodes": matched}."""
    add = b.made_by(new_h, "Add")
    for keep, update in permutations(add.input) if add is not None else ():
        keep_mul, update_mul = b.made_by(keep, "Mul"), b.made_by(update, "Mul")
        if keep_mul is None or update_mul is None or h not in keep_mul.input:
            continue
        z = next(i for i in keep_mul.input if i != h) if list(keep_mul.input).count(h) == 1 else None
        for one_minus_z, n in permutations(update_mul.input):
            sub = b.made_by(one_minus_z, "Sub")
            tanh = b.made_by(n, "Tanh")
            if z is None or sub is None or tanh is None or sub.input[1] != z or \
                    (one := b.const(sub.input[0])) is None or one.size != 1 or float(one.reshape(())) != 1.0:
                continue
            gates = _gru_gates(b, z, tanh)
            if gates is not None:
                gates["nodes"] += [add, keep_mul, update_mul, sub, tanh]
                return gates
    return None


def _gru_gates(b: _Body, z: str, tanh: onnx.NodeProto) -> dict | None:
    """The z, r, h gate inputs of _match_gru_cell: one Split of the step input, three Slices of h @ R + rb."""
    z_sigmoid = b.made_by(z, "Sigmoid")
    n_add = b.made_by(tanh.input[0], "Add")
    if z_sigmoid is None or n_add is None:
        return None
    for xh, reset_product in permutations(n_add.input):
        mul = b.made_by(reset_product, "Mul")
        for r, hh in permutations(mul.input) if mul is not None else ():
            r_sigmoid = b.made_by(r, "Sigmoid")
            z_add, r_add = b.made_by(z_sigmoid.input[0], "Add"), b.made_by(r_sigmoid.input[0], "Add") \
                if r_sigmoid is not None else None
            if r_sigmoid is None or z_add is None or r_add is None:
                continue
            parts = {"h": (xh, hh)}
            for gate, node in (("z", z_add), ("r", r_add)):
                split_out = next((i for i in node.input if b.made_by(i, "Split") is not None), None)
                if split_out is None:
                    break
                parts[gate] = (split_out, next(i for i in node.input if i != split_out))
            if len(parts) != 3:
                continue
            split = b.made_by(parts["z"][0], "Split")
            if any(b.producer.get(parts[g][0]) is not split for g in "zrh") or \
                    [list(split.output).index(parts[g][0]) for g in "zrh"] != [0, 1, 2] or len(split.input) > 1:
                continue
            slices = [b.made_by(parts[g][1], "Slice") for g in "zrh"]
            if any(s is None for s in slices) or len({s.input[0] for s in slices}) != 1:
                continue
            recurrent = b.made_by(slices[0].input[0], "Add")
            for product, bias in permutations(recurrent.input) if recurrent is not None else ():
                matmul = b.made_by(product, "MatMul")
                rb = b.const(bias)
                weights = b.const(matmul.input[1]) if matmul is not None else None
                if weights is None or rb is None or weights.ndim != 2 or weights.shape[1] % 3:
                    continue
                size = weights.shape[1] // 3
                if not _slices_last_axis_in_thirds(b, slices, size):
                    continue
                return {"x": split.input[0], "h_in": matmul.input[0], "R": weights, "rb": rb.reshape(-1), "size": size,
                        "nodes": [z_sigmoid, n_add, mul, r_sigmoid, z_add, r_add, split, *slices, recurrent, matmul]}
    return None


def _slices_last_axis_in_thirds(b: _Body, slices: list[onnx.NodeProto], size: int) -> bool:
    for third, node in enumerate(slices):
        starts, ends = (b.const(node.input[1]), b.const(node.input[2]))
        axes = b.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        steps = b.const(node.input[4]) if len(node.input) > 4 and node.input[4] else None
        if starts is None or ends is None or axes is None or (steps is not None and np.any(steps != 1)):
            return False
        last = {int(a): (int(s), int(e)) for a, s, e in zip(axes, starts, ends)}
        others = {a: se for a, se in last.items() if a not in (-1, 1)}
        if any(se != (0, 2**31 - 1) and se[0] != 0 for se in others.values()) or \
                any(se[1] < 2**31 - 1 for se in others.values()):
            return False
        start, end = last.get(1, last.get(-1, (None, None)))
        if start != third * size or min(end, 3 * size) != (third + 1) * size:
            return False
    return True


def _match_rnn_cell(b: _Body, h: str, new_h: str) -> dict | None:
    """Keras 3's SimpleRNN cell (tanh) after loop_simplification: h' = tanh(x + h @ R)."""
    tanh = b.made_by(new_h, "Tanh")
    add = b.made_by(tanh.input[0], "Add") if tanh is not None else None
    for x, product in permutations(add.input) if add is not None else ():
        matmul = b.made_by(product, "MatMul")
        weights = b.const(matmul.input[1]) if matmul is not None and matmul.input[0] == h else None
        if weights is not None and weights.ndim == 2 and weights.shape[0] == weights.shape[1]:
            return {"x": x, "R": weights, "rb": np.zeros(weights.shape[1], weights.dtype), "size": weights.shape[1],
                    "nodes": [tanh, add, matmul]}
    return None


def _recurrent_op(index: Graph, loop: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    """The ONNX GRU/RNN nodes computing what a simplified tf2onnx recurrent loop computes, or None."""
    graph = index.graph
    body = next(a.g for a in loop.attribute if a.name == "body")
    if len(body.input) != 4 or len(body.output) != 4 or len(loop.input) != 4 or len(loop.output) != 3:
        return None
    _, cond_in, counter, h = (i.name for i in body.input)
    cond_out, counter_out, h_out, scan = (o.name for o in body.output)
    b = _Body(graph, body)
    step_add = b.made_by(counter_out, "Add")
    new_h, identity = scan, None  # the state carried and the step's output: one value, or one an Identity of the other
    if h_out != scan:
        carried_copy, scanned_copy = b.made_by(h_out, "Identity"), b.made_by(scan, "Identity")
        if carried_copy is not None and carried_copy.input[0] == scan:
            identity = carried_copy
        elif scanned_copy is not None and scanned_copy.input[0] == h_out:
            new_h, identity = h_out, scanned_copy
        else:
            return None
    if cond_out != cond_in or step_add is None or counter not in step_add.input or \
            (one := b.const(next(i for i in step_add.input if i != counter))) is None or one.size != 1 or \
            int(one.reshape(())) != 1:
        return None
    trip, go, start = (folded(graph, name) for name in loop.input[:3])
    if trip is None or start is None or go is None or trip.size != 1 or int(start.reshape(())) != 0 or \
            not bool(go.reshape(())) or loop.output[0] in index.outputs or \
            any(loop.output[0] in n.input for n in graph.node):
        return None
    kind, cell = "GRU", _match_gru_cell(b, h, new_h)
    if cell is None:
        kind, cell = "RNN", _match_rnn_cell(b, h, new_h)
    gather = b.made_by(cell["x"], "Gather") if cell is not None else None
    if gather is None or gather.input[1] != counter or any(a.name == "axis" and a.i != 0 for a in gather.attribute):
        return None
    projected, bias = gather.input[0], None
    if (add := index.made_by(projected, "Add")) is not None:
        matmul = next((index.made_by(i, "MatMul") for i in add.input if index.made_by(i, "MatMul")), None)
        bias = folded(graph, next(i for i in add.input if matmul is None or i != matmul.output[0]))
    else:
        matmul = index.made_by(projected, "MatMul")
    weights = folded(graph, matmul.input[1]) if matmul is not None else None
    size, gates = cell["size"], 3 if kind == "GRU" else 1
    sequence = matmul.input[0] if matmul is not None else ""
    shape = index.shapes.get(sequence)
    matched = {id(n) for n in [*cell["nodes"], step_add, gather, *([identity] if identity is not None else [])]}
    if weights is None or weights.ndim != 2 or weights.shape[1] != gates * size or shape is None or len(shape) != 3 \
            or cell.get("h_in", h) != h or any(id(n) not in matched for n in body.node):
        return None
    bias = np.zeros(gates * size, np.float32) if bias is None else np.broadcast_to(bias, (gates * size,))
    if bias.size != gates * size:
        return None
    name = loop.name or loop.output[-1]
    w = index.add_constant("rnn_W", np.ascontiguousarray(weights.T[None]).astype(np.float32))
    r = index.add_constant("rnn_R", np.ascontiguousarray(cell["R"].T[None]).astype(np.float32))
    biases = index.add_constant("rnn_B", np.concatenate([bias, cell["rb"]])[None].astype(np.float32))
    axis0, axis1 = index.add_constant("axes", np.array([0], np.int64)), index.add_constant("axes", np.array([1], np.int64))
    extra = {"linear_before_reset": 1} if kind == "GRU" else {}
    steps = []
    if shape[0] != int(trip.reshape(())):  # the loop reads the first M steps (and fails where there are fewer)
        ends = index.add_constant("ends", trip.reshape(1).astype(np.int64))
        steps = [helper.make_node("Slice", [sequence, index.add_constant("starts", np.array([0], np.int64)), ends,
                                            axis0], [f"{name}/steps"])]
        sequence = f"{name}/steps"
    return [*steps, helper.make_node("Unsqueeze", [loop.input[3], axis0], [f"{name}/initial_h"]),
            helper.make_node(kind, [sequence, w, r, biases, "", f"{name}/initial_h"], [f"{name}/Y", f"{name}/Y_h"],
                             hidden_size=size, name=f"{name}/{kind}", **extra),
            helper.make_node("Squeeze", [f"{name}/Y", axis1], [loop.output[2]]),
            helper.make_node("Squeeze", [f"{name}/Y_h", axis0], [loop.output[1]])]


def fuse_recurrent_loops(model: onnx.ModelProto) -> int:
    """tf2onnx's loops of Keras 3 GRU (reset_after) and SimpleRNN cells, once loop_simplification has run → ONNX GRU
    (linear_before_reset=1) / RNN over the whole sequence: one kernel instead of a loop of small ops, on onnxruntime's
    CPU and CUDA providers alike. Returns the loops replaced."""
    simplify_loops(model)
    index, fusions = Graph(model), 0
    for loop in [n for n in model.graph.node if n.op_type == "Loop"]:
        replacement = _recurrent_op(index, loop)
        if replacement is None:
            continue
        position = list(model.graph.node).index(loop)
        model.graph.node.remove(loop)
        for offset, node in enumerate(replacement):
            model.graph.node.insert(position + offset, node)
        fusions += 1
    remove_dead_nodes(model)
    return fusions
