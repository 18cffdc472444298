"""The `shape_simplification` step: a Reshape whose target shape is computed at run time (Shape → Gather → Concat) gets
it as a constant where ONNX shape inference knows every dimension but one (that one becomes -1); a Transpose that
only moves dimensions of size 1 becomes a Reshape; Reshape → Reshape collapses; a Reshape to the shape its input
already has disappears; a Transpose followed by elementwise ops and a reduction that drops the moved axes goes
(sink_transposes_into_reductions); nodes nothing uses any more are removed.
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from onnx_stage.graph_passes.graph_index import Dim, Graph, reduction_axes, remove_dead_nodes, rename_uses


def _shape_constant(shape: list[Dim] | None) -> np.ndarray | None:
    """A Reshape target for a tensor of this shape: every size known and positive but at most one (-1)."""
    if shape is None or sum(d is None for d in shape) > 1 or any(d == 0 for d in shape):
        return None
    return np.array([-1 if d is None else d for d in shape], dtype=np.int64)


def _same_shape(a: list[Dim] | None, b: list[Dim] | None) -> bool:
    """Equal shapes for tensors of equal size: every size known and equal, but at most one unknown on both sides
    (equal sizes then force it equal)."""
    if a is None or b is None or len(a) != len(b) or any(d == 0 for d in a):
        return False
    unknown = [i for i, (x, y) in enumerate(zip(a, b)) if x is None or y is None]
    return len(unknown) <= 1 and all(a[i] is None and b[i] is None for i in unknown) and \
        all(x == y for x, y in zip(a, b) if x is not None)


def probed_reshape_targets(model: onnx.ModelProto, reshapes: list[str]) -> dict[str, np.ndarray]:
    """For Reshapes (named by their output) whose computed target shape inference cannot tell: run the model on
    zeros at two sizes of every dynamic input dimension (2 and 3 rows; 17 and 19 for inner ones) and return, per
    Reshape whose output sizes are positive and change in at most one place, those sizes with the changing one as -1.
    A model that fails on the probes gives {}. The parity gate (every validation case: batch 1 and N, other sequence
    lengths) then proves the rewrite on real inputs."""
    probe = copy.deepcopy(model)
    del probe.graph.output[:]
    for name in reshapes:
        probe.graph.node.append(helper.make_node("Shape", [name], [f"{name}/probed_shape"]))
        probe.graph.output.append(helper.make_tensor_value_info(f"{name}/probed_shape", onnx.TensorProto.INT64, None))
    remove_dead_nodes(probe)
    runs = []
    try:
        session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        dtypes = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
        for rows, inner in ((2, 17), (3, 19)):
            feed = {i.name: np.zeros([d if isinstance(d, int) and d > 0 else (rows if axis == 0 else inner)
                                      for axis, d in enumerate(i.shape)],
                                     dtype=helper.tensor_dtype_to_np_dtype(dtypes[i.name]))
                    for i in session.get_inputs()}
            runs.append(session.run(None, feed))
    except Exception:  # noqa: BLE001 -- a model that cannot run on zeros keeps its computed targets
        return {}
    targets = {}
    for name, first, second in zip(reshapes, *runs):
        if first.shape != second.shape or np.any(first <= 0) or np.any(second <= 0):
            continue
        changing = first != second
        if changing.sum() <= 1:
            targets[name] = np.where(changing, -1, first).astype(np.int64)
    return targets


ELEMENTWISE_UNARY = {"Relu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "LeakyRelu", "Elu", "Selu", "Softplus", "Abs",
                     "Neg", "Exp", "Log", "Sqrt", "Erf", "Identity"}


REDUCTIONS = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"}


def sink_transposes_into_reductions(model: onnx.ModelProto) -> int:
    """A Transpose whose every use leads, through elementwise ops (unary; binary with a constant or between values of
    the region), into one reduction whose remaining axes keep their order (NCHW → NHWC → BatchNorm, ReLU6 or
    hard-swish → mean over H, W: Keras' pooling head) computes the same on the untransposed tensor with constants and
    axes permuted: the Transpose goes, and onnxruntime can fold the scale into the convolution before it. A reduction
    that keeps dimensions qualifies when a constant Reshape reads it (it then differs only in where its size-1
    dimensions sit). Returns the Transposes removed."""
    index, rewrites = Graph(model, shapes=False), 0
    readers = index.readers
    for transpose in [n for n in model.graph.node if n.op_type == "Transpose"]:
        perm = next((list(a.ints) for a in transpose.attribute if a.name == "perm"), None)
        if perm is not None and (region := _elementwise_region(index, readers, transpose.output[0], len(perm))):
            nodes, reduction = region
            axes = [a % len(perm) for a in reduction_axes(index, reduction)]
            remaining = [perm[k] for k in range(len(perm)) if k not in axes]
            keepdims = next((a.i for a in reduction.attribute if a.name == "keepdims"), 1)
            reshape = readers.get(reduction.output[0], [])
            if remaining != sorted(remaining) or (keepdims and not (
                    len(reshape) == 1 and reshape[0].op_type == "Reshape" and reduction.output[0] not in index.outputs
                    and (target := index.const(reshape[0].input[1])) is not None and not np.any(target == 0))):
                continue
            inverse = list(np.argsort(perm))
            for node in nodes:
                for position, name in enumerate(node.input):
                    value = index.const(name) if node.op_type != "Clip" else None
                    if value is not None and value.ndim:
                        value = value.reshape((1,) * (len(perm) - value.ndim) + value.shape).transpose(inverse)
                        node.input[position] = index.add_constant("untransposed", value)
            new_axes = sorted(perm[a] for a in axes)
            if any(a.name == "axes" for a in reduction.attribute):
                next(a for a in reduction.attribute if a.name == "axes").ints[:] = new_axes
            else:
                reduction.input[1] = index.add_constant("axes", np.array(new_axes, np.int64))
            rename_uses(model.graph, transpose.output[0], transpose.input[0])
            rewrites += 1
    return rewrites


def _elementwise_region(index: Graph, readers: dict[str, list[onnx.NodeProto]], start: str, rank: int,
                        ) -> tuple[list[onnx.NodeProto], onnx.NodeProto] | None:
    """The elementwise nodes every use of `start` flows through, and the one reduction they all end in; None when a
    use leaves the region another way (a graph output, another op, a constant of higher rank)."""
    values, nodes, reduction, pending = {start}, [], None, [start]
    while pending:
        name = pending.pop()
        if name in index.outputs:
            return None
        for node in readers.get(name, []):
            if node in nodes or node is reduction:
                continue
            if node.op_type in REDUCTIONS and node.input[0] == name and reduction is None \
                    and reduction_axes(index, node) is not None:
                reduction = node
                continue
            constant_inputs = [i for i in node.input if i and index.const(i) is not None]
            if node.op_type in ELEMENTWISE_UNARY and (node.op_type != "Clip" or all(
                    index.const(i).size == 1 for i in constant_inputs)) and \
                    len([i for i in node.input if i]) - len(constant_inputs) == 1:
                pass
            elif node.op_type in {"Add", "Sub", "Mul", "Div"} and all(
                    index.const(i).ndim <= rank for i in constant_inputs):
                pass
            else:
                return None
            nodes.append(node)
            values.update(node.output)
            pending.extend(node.output)
    inputs_known = all(i in values or index.const(i) is not None for n in nodes for i in n.input if i)
    return (nodes, reduction) if reduction is not None and inputs_known else None


def _axes_of(index: Graph, node: onnx.NodeProto) -> list[int] | None:
    axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
    if axes is None and len(node.input) > 1 and (constant := index.const(node.input[1])) is not None:
        axes = constant.reshape(-1).tolist()
    return axes


def drop_squeeze_pairs(model: onnx.ModelProto) -> int:
    """Squeeze(axes) → unary elementwise ops → Unsqueeze(the same axes) (tf2onnx's Conv1D: a 2-D convolution squeezed
    to 3-D for its ReLU and unsqueezed again for the pooling): the ops run on the unsqueezed tensor, both nodes go,
    and onnxruntime can fuse the activation into the convolution. Returns the pairs removed."""
    index, removed = Graph(model, shapes=False), 0
    readers = index.readers
    for squeeze in [n for n in model.graph.node if n.op_type == "Squeeze"]:
        axes, chain, current = _axes_of(index, squeeze), [], squeeze.output[0]
        while axes and len(readers.get(current, [])) == 1 and current not in index.outputs:
            node = readers[current][0]
            if node.op_type == "Unsqueeze" and _axes_of(index, node) == axes and node.output[0] not in index.outputs \
                    and chain:
                chain[0].input[0] = squeeze.input[0]
                rename_uses(model.graph, node.output[0], chain[-1].output[0])
                removed += 1
                break
            if node.op_type not in ELEMENTWISE_UNARY or node.input[0] != current or any(
                    index.const(i) is None or index.const(i).size != 1 for i in node.input[1:] if i):
                break
            chain.append(node)
            current = node.output[0]
    return removed


def simplify_shapes(model: onnx.ModelProto) -> int:
    """Computed Reshape targets → constants (from shape inference, else probed_reshape_targets); Transposes that only
    move size-1 dimensions → Reshape; Reshape chains collapsed; Reshapes to their input's own shape removed;
    Transposes sunk into reductions; then dead nodes removed. Returns the rewrites made."""
    index, rewrites = Graph(model), 0
    computed = [n for n in model.graph.node if n.op_type == "Reshape" and index.const(n.input[1]) is None
                and not any(a.name == "allowzero" and a.i for a in n.attribute)]
    unknown = [n.output[0] for n in computed if _shape_constant(index.shapes.get(n.output[0])) is None]
    probed = probed_reshape_targets(model, sorted(set(unknown))) if unknown else {}
    for node in model.graph.node:
        if node in computed:
            target = _shape_constant(index.shapes.get(node.output[0]))
            target = probed.get(node.output[0]) if target is None else target
            if target is not None:
                node.input[1] = index.add_constant("shape", target)
                rewrites += 1
        elif node.op_type == "Transpose" and (shape := index.shapes.get(node.input[0])) is not None:
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), list(range(len(shape)))[::-1])
            moved = [axis for axis in perm if shape[axis] != 1]
            target = _shape_constant(index.shapes.get(node.output[0]))
            if moved == sorted(moved) and target is not None:
                del node.attribute[:]
                node.op_type, node.domain = "Reshape", ""
                node.input.append(index.add_constant("shape", target))
                rewrites += 1
    rewrites += _collapse_reshapes(model, index) + drop_squeeze_pairs(model)
    if sunk := sink_transposes_into_reductions(model):  # reduction outputs changed layout: shapes inferred again
        rewrites += sunk + _collapse_reshapes(model, Graph(model))
    remove_dead_nodes(model)
    return rewrites


def _collapse_reshapes(model: onnx.ModelProto, index: Graph) -> int:
    """Reshape → Reshape (constant target without 0s) reads the first one's input; a Reshape to its input's own
    shape is bypassed. `index` must describe the model's current shapes."""
    rewrites = 0
    for node in model.graph.node:
        if node.op_type != "Reshape" or any(a.name == "allowzero" and a.i for a in node.attribute):
            continue
        inner = index.made_by(node.input[0], "Reshape")
        target = index.const(node.input[1])
        if inner is not None and target is not None and not np.any(target == 0):
            node.input[0] = inner.input[0]
            rewrites += 1
        if _same_shape(index.shapes.get(node.input[0]), index.shapes.get(node.output[0])) and \
                index.bypass(node, node.input[0]):
            rewrites += 1
    return rewrites
