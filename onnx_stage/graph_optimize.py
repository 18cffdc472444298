"""Graph optimisation of the converted model: exact rewrites in standard ONNX ops, each kept only if it proves itself.

The steps (`convert.graph_optimizations`, in order):
- `neutral_elementwise`: drops `x + 0`, `x - 0`, `x * 1`, `x / 1` with constant zeros/ones that do not broadcast `x`
  to a bigger shape (the lean route attaches weights after conversion, so a zero bias stays an Add that plain
  tf2onnx's frozen graph folds away), and Identity nodes (input naming, output naming).
- `shape_simplification`: a Reshape whose target shape is computed at run time (Shape → Gather → Concat) gets it
  as a constant where ONNX shape inference knows every dimension but one (that one becomes -1); a Transpose that
  only moves dimensions of size 1 becomes a Reshape; Reshape → Reshape collapses; a Reshape to the shape its input
  already has disappears; a Transpose followed by elementwise ops and a reduction that drops the moved axes goes
  (sink_transposes_into_reductions); nodes nothing uses any more are removed.
- `layer_norm_fusion`: TensorFlow's layer normalisation as tf2onnx writes it (moments: mean, squared difference,
  variance, Rsqrt as Sqrt + Reciprocal, scale and shift) over the last axis becomes one ONNX LayerNormalization
  (opset 17 or later: a standard op, with kernels on onnxruntime's CPU and CUDA providers).
- `loop_simplification`: tf2onnx's while loops of recurrent layers it does not fuse (Keras 3 GRU, SimpleRNN): the
  weights it carries through every iteration read from outside the loop instead, body nodes that read only
  constants hoisted in front of it, the input projection done for all steps at once before it, and a loop
  condition that cannot end the loop before its constant trip count no longer computed every step.
- `recurrent_fusion`: such a loop whose body is exactly a Keras 3 GRU cell (reset_after) or SimpleRNN cell, run over
  every step of its input from a zero counter, becomes one ONNX GRU (linear_before_reset=1) or RNN node.
- `global_pooling`: a ReduceMean over every axis after the first two becomes GlobalAveragePool (its own kernel,
  also in onnxruntime's blocked NCHWc layout).

Nothing here writes onnxruntime's own fused ops (FusedConv, NCHWc, ...): those exist for one execution provider and
would break the twin's CUDA-then-CPU provider list. A step is kept only if the model it makes computes the unoptimised
model's outputs on every validation case (`MAX_ABS`/`MAX_REL`, far inside validation's tolerances) and is measured
faster in interleaved timing; the result says which steps were kept and why the others were not.
"""
from __future__ import annotations

import copy
import shutil
import time
from collections.abc import Callable
from itertools import permutations
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from onnx_stage.parity import close_enough
from onnx_stage.sessions import open_session
from onnx_stage.timing import time_interleaved

GraphPass = Callable[[onnx.ModelProto], int]  # rewrites the model in place, returns how many rewrites it made
# ONNX-vs-ONNX: an exact rewrite changes float rounding only (LayerNormalization sums in another order)
MAX_ABS, MAX_REL = 1e-5, 1e-4
Dim = int | None  # a known size, or None (symbolic/unknown)


class _Graph:
    """Index of one model's main graph: producers, consumers (subgraphs' outer-scope references included),
    constants and the shapes ONNX shape inference gives (with data propagation: Shape → Gather → Concat chains)."""

    def __init__(self, model: onnx.ModelProto, shapes: bool = True) -> None:
        self.model, self.graph = model, model.graph
        self.constants = {t.name: t for t in self.graph.initializer}
        self.constants |= {n.output[0]: n.attribute[0].t for n in self.graph.node
                           if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.readers: dict[str, list[onnx.NodeProto]] = {}  # main-graph nodes reading each name, as built
        for node in self.graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in self.graph.output}
        self.shapes: dict[str, list[Dim]] = {}
        if shapes:
            try:
                inferred = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
            except Exception:  # noqa: BLE001 -- a model onnx cannot infer is left as it is by shape-based rewrites
                inferred = self.graph
            for info in (*inferred.input, *inferred.value_info, *inferred.output):
                if info.type.tensor_type.HasField("shape"):
                    self.shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None
                                              for d in info.type.tensor_type.shape.dim]

    def const(self, name: str) -> np.ndarray | None:
        return numpy_helper.to_array(self.constants[name]) if name in self.constants else None

    def made_by(self, name: str, op_type: str) -> onnx.NodeProto | None:
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    def add_constant(self, stem: str, array: np.ndarray) -> str:
        name, index = f"graph_opt/{stem}", 0
        while f"{name}_{index}" in self.constants or f"{name}_{index}" in self.producer:
            index += 1
        tensor = numpy_helper.from_array(array, f"{name}_{index}")
        self.graph.initializer.append(tensor)
        self.constants[tensor.name] = tensor
        return tensor.name

    def bypass(self, node: onnx.NodeProto, replacement: str) -> bool:
        """Consumers of node's output read `replacement` instead; the node is left for dead-node removal.
        False (nothing done) when the output is a graph output."""
        if node.output[0] in self.outputs:
            return False
        _rename_uses(self.graph, node.output[0], replacement)
        return True


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)):
                _rename_uses(sub, old, new)


def _used_names(graph: onnx.GraphProto) -> set[str]:
    used = {name for node in graph.node for name in node.input}
    for node in graph.node:
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)):
                used |= _used_names(sub)
    return used


def remove_dead_nodes(model: onnx.ModelProto) -> int:
    """Remove nodes none of whose outputs is used (by a node, a subgraph or as a graph output), and unused
    initializers. Returns the number of nodes removed."""
    return _remove_dead(model.graph)


def _remove_dead(graph: onnx.GraphProto) -> int:
    removed = 0
    while True:
        used = _used_names(graph) | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output if o)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
        removed += len(dead)
    used = _used_names(graph) | {o.name for o in graph.output}
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)
    return removed


def _broadcasts_into(constant: np.ndarray, shape: list[Dim] | None) -> bool:
    """Whether `x op constant` has x's shape: the constant's dimensions, aligned right, are 1 or x's (known) size."""
    if shape is None or constant.ndim > len(shape):
        return False
    return all(c == 1 or c == s for c, s in zip(constant.shape[::-1], shape[::-1]))


def remove_neutral_elementwise(model: onnx.ModelProto) -> int:
    """Drop `x + 0`, `0 + x`, `x - 0`, `x * 1`, `1 * x`, `x / 1` (float constants that leave x's shape as it is),
    Identity nodes (see _drop for graph outputs) and a Gemm's all-zero C. Returns the number of rewrites."""
    index, rewrites = _Graph(model), 0
    neutral = {"Add": (0.0, (0, 1)), "Sub": (0.0, (1,)), "Mul": (1.0, (0, 1)), "Div": (1.0, (1,))}
    for node in list(model.graph.node):
        if node.op_type == "Identity":
            rewrites += _drop(index, node, node.input[0])
            continue
        if node.op_type == "Gemm" and len(node.input) == 3 and (bias := index.const(node.input[2])) is not None \
                and bias.size and not np.any(bias):
            del node.input[2]  # C = 0: the product alone
            rewrites += 1
            continue
        if node.op_type not in neutral or len(node.input) != 2:
            continue
        value, positions = neutral[node.op_type]
        for position in positions:
            constant, other = index.const(node.input[position]), node.input[1 - position]
            if (constant is not None and constant.dtype.kind == "f" and constant.size and np.all(constant == value)
                    and _broadcasts_into(constant, index.shapes.get(other)) and _drop(index, node, other)):
                rewrites += 1
                break
    remove_dead_nodes(model)
    return rewrites


def _drop(index: _Graph, node: onnx.NodeProto, kept: str) -> bool:
    """Remove a node that computes its input `kept` unchanged: its consumers read `kept`; when its output is a
    graph output, the node producing `kept` writes that name itself (if nothing else reads `kept`)."""
    if index.bypass(node, kept):
        return True
    target, producer = node.output[0], index.producer.get(kept)
    in_subgraphs = {name for n in index.graph.node for a in n.attribute
                    for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)) for name in _used_names(g)}
    if producer is None or kept in index.outputs or kept in in_subgraphs or \
            sum(list(n.input).count(kept) for n in index.graph.node) != 1:
        return False
    producer.output[list(producer.output).index(kept)] = target
    index.producer[target] = producer
    index.graph.node.remove(node)
    return True


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


def _reduction_axes(index: _Graph, node: onnx.NodeProto) -> list[int] | None:
    axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
    if axes is None and len(node.input) > 1 and (constant := index.const(node.input[1])) is not None:
        axes = constant.tolist()
    return axes


def sink_transposes_into_reductions(model: onnx.ModelProto) -> int:
    """A Transpose whose every use leads, through elementwise ops (unary; binary with a constant or between values of
    the region), into one reduction whose remaining axes keep their order (NCHW → NHWC → BatchNorm, ReLU6 or
    hard-swish → mean over H, W: Keras' pooling head) computes the same on the untransposed tensor with constants and
    axes permuted: the Transpose goes, and onnxruntime can fold the scale into the convolution before it. A reduction
    that keeps dimensions qualifies when a constant Reshape reads it (it then differs only in where its size-1
    dimensions sit). Returns the Transposes removed."""
    index, rewrites = _Graph(model, shapes=False), 0
    readers = index.readers
    for transpose in [n for n in model.graph.node if n.op_type == "Transpose"]:
        perm = next((list(a.ints) for a in transpose.attribute if a.name == "perm"), None)
        if perm is not None and (region := _elementwise_region(index, readers, transpose.output[0], len(perm))):
            nodes, reduction = region
            axes = [a % len(perm) for a in _reduction_axes(index, reduction)]
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
            _rename_uses(model.graph, transpose.output[0], transpose.input[0])
            rewrites += 1
    return rewrites


def _elementwise_region(index: _Graph, readers: dict[str, list[onnx.NodeProto]], start: str, rank: int,
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
                    and _reduction_axes(index, node) is not None:
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


def _axes_of(index: _Graph, node: onnx.NodeProto) -> list[int] | None:
    axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
    if axes is None and len(node.input) > 1 and (constant := index.const(node.input[1])) is not None:
        axes = constant.reshape(-1).tolist()
    return axes


def drop_squeeze_pairs(model: onnx.ModelProto) -> int:
    """Squeeze(axes) → unary elementwise ops → Unsqueeze(the same axes) (tf2onnx's Conv1D: a 2-D convolution squeezed
    to 3-D for its ReLU and unsqueezed again for the pooling): the ops run on the unsqueezed tensor, both nodes go,
    and onnxruntime can fuse the activation into the convolution. Returns the pairs removed."""
    index, removed = _Graph(model, shapes=False), 0
    readers = index.readers
    for squeeze in [n for n in model.graph.node if n.op_type == "Squeeze"]:
        axes, chain, current = _axes_of(index, squeeze), [], squeeze.output[0]
        while axes and len(readers.get(current, [])) == 1 and current not in index.outputs:
            node = readers[current][0]
            if node.op_type == "Unsqueeze" and _axes_of(index, node) == axes and node.output[0] not in index.outputs \
                    and chain:
                chain[0].input[0] = squeeze.input[0]
                _rename_uses(model.graph, node.output[0], chain[-1].output[0])
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
    index, rewrites = _Graph(model), 0
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
        rewrites += sunk + _collapse_reshapes(model, _Graph(model))
    remove_dead_nodes(model)
    return rewrites


def _collapse_reshapes(model: onnx.ModelProto, index: _Graph) -> int:
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


def _reduces_last_axis(index: _Graph, node: onnx.NodeProto | None, x: str) -> bool:
    """node is a mean over x's last axis, dimensions kept: GlobalAveragePool of a rank-3 x, or ReduceMean."""
    rank = len(index.shapes.get(x) or [])
    if node is None or node.input[0] != x or rank < 2:
        return False
    if node.op_type == "GlobalAveragePool":
        return rank == 3
    if node.op_type != "ReduceMean" or any(a.name == "keepdims" and a.i == 0 for a in node.attribute):
        return False
    axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
    if axes is None and len(node.input) > 1 and (constant := index.const(node.input[1])) is not None:
        axes = constant.tolist()
    return axes is not None and [a % rank for a in axes] == [rank - 1]


def _match_layer_norm(index: _Graph, add: onnx.NodeProto) -> tuple[str, np.ndarray | None, np.ndarray | None, float] | None:
    """(x, gamma, beta, epsilon) when add = x * s + (beta - mean * s), s = gamma / sqrt(var + eps), mean and var
    over x's last axis, as tf2onnx writes tf.nn.batch_normalization over moments; None otherwise."""
    for scaled_name, shift_name in permutations(add.input):
        scaled = index.made_by(scaled_name, "Mul")
        for x, s in permutations(scaled.input) if scaled is not None else ():
            gamma, r = None, s
            if (gamma_mul := index.made_by(s, "Mul")) is not None:
                for r_name, g_name in permutations(gamma_mul.input):
                    if index.made_by(r_name, "Reciprocal") is not None and index.const(g_name) is not None:
                        r, gamma = r_name, index.const(g_name)
            reciprocal = index.made_by(r, "Reciprocal")
            sqrt = index.made_by(reciprocal.input[0], "Sqrt") if reciprocal is not None else None
            plus_eps = index.made_by(sqrt.input[0], "Add") if sqrt is not None else None
            if plus_eps is None:
                continue
            for var_name, eps_name in permutations(plus_eps.input):
                eps = index.const(eps_name)
                variance = index.producer.get(var_name)
                if eps is None or eps.size != 1 or variance is None:
                    continue
                square = index.made_by(variance.input[0], "Mul")
                diff = index.made_by(square.input[0], "Sub") if square is not None else None
                if diff is None or square.input[0] != square.input[1] or diff.input[0] != x:
                    continue
                mean = diff.input[1]
                if not (_reduces_last_axis(index, index.producer.get(mean), x)
                        and _reduces_last_axis(index, variance, square.output[0])):
                    continue
                beta = _layer_norm_shift(index, shift_name, mean, s)
                if beta is not False:
                    return x, gamma, beta, float(eps.reshape(()))
    return None


def _layer_norm_shift(index: _Graph, name: str, mean: str, s: str) -> np.ndarray | None | bool:
    """beta when name = beta + (-mean) * s (or -mean * s alone: None); False when it is neither."""
    def is_neg_mean_times_s(candidate: str) -> bool:
        mul = index.made_by(candidate, "Mul")
        return mul is not None and any(
            (neg := index.made_by(a, "Neg")) is not None and neg.input[0] == mean and b == s
            for a, b in permutations(mul.input))
    if is_neg_mean_times_s(name):
        return None
    if (add := index.made_by(name, "Add")) is not None:
        for product, beta in permutations(add.input):
            if is_neg_mean_times_s(product) and index.const(beta) is not None:
                return index.const(beta)
    return False


def fuse_layer_norm(model: onnx.ModelProto) -> int:
    """Replace tf2onnx's layer-normalisation subgraphs over the last axis with ONNX LayerNormalization (needs
    opset ≥ 17; float32 gamma/beta of the last axis' size, any leading size-1 dimensions). Returns the fusions."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 17:
        return 0
    index, fusions = _Graph(model), 0
    for position, node in enumerate(list(model.graph.node)):
        match = _match_layer_norm(index, node) if node.op_type == "Add" else None
        if match is None:
            continue
        x, gamma, beta, epsilon = match
        size = (index.shapes.get(x) or [None])[-1]
        params = [p for p in (gamma, beta) if p is not None]
        if size is None or any(p.dtype != np.float32 or p.size != size for p in params):
            continue
        scale = index.add_constant("ln_scale", (gamma if gamma is not None else np.ones(size, np.float32)).reshape(size))
        bias = index.add_constant("ln_bias", (beta if beta is not None else np.zeros(size, np.float32)).reshape(size))
        fused = helper.make_node("LayerNormalization", [x, scale, bias], [node.output[0]], axis=-1, epsilon=epsilon,
                                 name=f"{node.name or node.output[0]}/LayerNormalization")
        model.graph.node.remove(node)
        model.graph.node.insert(list(model.graph.node).index(index.producer[x]) + 1 if x in index.producer
                                else 0, fused)
        index.producer[node.output[0]] = fused
        fusions += 1
    _toposort(model.graph)
    remove_dead_nodes(model)
    return fusions


def _toposort(graph: onnx.GraphProto) -> None:
    """Order nodes so that each comes after the producers of its inputs (outer-scope names count as available)."""
    produced = {o for n in graph.node for o in n.output}
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    pending, ordered = list(graph.node), []
    while pending:
        progress = [n for n in pending if all(not i or i in ready or i not in produced for i in n.input)]
        if not progress:
            return  # a cycle: leave the order alone, onnx.checker will say so
        for node in progress:
            ordered.append(node)
            ready.update(node.output)
        pending = [n for n in pending if all(n is not m for m in progress)]
    del graph.node[:]
    graph.node.extend(ordered)


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return [g for a in node.attribute for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs))]


def _carry_invariants_from_outside(graph: onnx.GraphProto, loop: onnx.NodeProto, body: onnx.GraphProto) -> int:
    """Loop-carried values the body hands back unchanged (tf2onnx carries every weight of a recurrent cell through
    its while loop) become outer-scope references: no copy per iteration, and the body sees constants."""
    rewrites, outputs = 0, {o.name for o in graph.output}
    for j in reversed(range(len(body.input) - 2)):
        inside, initial = body.input[2 + j].name, loop.input[2 + j] if len(loop.input) > 2 + j else ""
        final = loop.output[j] if len(loop.output) > j else ""
        if (not initial or body.output[1 + j].name != inside or final in outputs
                or sum(o.name == inside for o in body.output) != 1):
            continue
        _rename_uses(body, inside, initial)
        if final:
            _rename_uses(graph, final, initial)
        del body.input[2 + j], body.output[1 + j], loop.input[2 + j], loop.output[j]
        rewrites += 1
    return rewrites


def _fresh(name: str, taken: set[str]) -> str:
    """`name`, or `name/1`, `name/2`, … : the first not in `taken`."""
    candidate, k = name, 0
    while candidate in taken:
        k += 1
        candidate = f"{name}/{k}"
    return candidate


def _unshadow(body: onnx.GraphProto, outer: set[str], suffix: str) -> None:
    """Rename the body's own values (node outputs, initializers) that reuse an outer name (tf2onnx gives the loops of a
    Bidirectional layer's two directions the same body names): hoisted out, they would collide."""
    for old in [o for n in body.node for o in n.output if o in outer] + [t.name for t in body.initializer
                                                                        if t.name in outer]:
        new = _fresh(f"{old}/{suffix}", outer)
        _rename_uses(body, old, new)
        for node in body.node:
            node.output[:] = [new if o == old else o for o in node.output]
        for tensor in body.initializer:
            if tensor.name == old:
                tensor.name = new
        for output in body.output:
            if output.name == old:
                output.name = new


def _hoist_invariants(graph: onnx.GraphProto, loop: onnx.NodeProto, body: onnx.GraphProto) -> int:
    """Body nodes that read only constants and outer values (a recurrent cell's bias split and squeezed every step)
    move in front of the loop: computed once instead of once per iteration."""
    taken = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {o for n in graph.node
                                                                                for o in n.output}
    _unshadow(body, taken, loop.name or loop.output[0])
    body_outputs = {o.name for o in body.output}
    body_constants = {t.name: t for t in body.initializer}
    hoisted = 0
    while True:
        made_inside = {i.name for i in body.input} | {o for n in body.node for o in n.output}
        movable = next((n for n in body.node
                        if not _subgraphs(n) and not n.op_type.startswith("Random") and n.op_type != "Multinomial"
                        and not any(i and i in made_inside for i in n.input)
                        and not any(o in body_outputs or o in taken for o in n.output)
                        and not any(i in taken and i in {t.name for t in body.initializer} for i in n.input)), None)
        if movable is None:
            return hoisted
        for name in movable.input:
            if name in body_constants and name not in taken:
                graph.initializer.append(body_constants[name])
                body.initializer.remove(body_constants[name])
                taken.add(name)
        body.node.remove(movable)
        graph.node.insert(list(graph.node).index(loop), movable)
        taken.update(movable.output)
        hoisted += 1


def _scalar(index: _Graph, body_constants: dict[str, onnx.TensorProto], name: str) -> float | None:
    tensor = body_constants.get(name)
    value = numpy_helper.to_array(tensor) if tensor is not None else index.const(name)
    return float(value.reshape(())) if value is not None and value.size == 1 else None


def _drop_redundant_condition(index: _Graph, loop: onnx.NodeProto, body: onnx.GraphProto) -> int:
    """A loop with a constant trip count M whose condition is `counter < K` (and-ed), where the counter is the
    iteration number (K ≥ M - 1) or a carried c0 + 1 per step (K - c0 ≥ M), is true in every iteration that runs:
    the body passes its condition through instead of computing it every step (tf2onnx's while-loop condition)."""
    trip_count = index.const(loop.input[0]) if loop.input and loop.input[0] else None
    if trip_count is None or trip_count.size != 1 or len(body.output) < 1:
        return 0
    trip_count = int(trip_count.reshape(()))
    produced = {o: n for n in body.node for o in n.output}
    constants = {t.name: t for t in body.initializer}

    def always_true_before_the_last_step(name: str) -> bool:
        less = produced.get(name)
        if less is None or less.op_type != "Less" or (bound := _scalar(index, constants, less.input[1])) is None:
            return False
        counter = less.input[0]
        while counter in produced and produced[counter].op_type == "Cast":
            counter = produced[counter].input[0]
        if counter == body.input[0].name:  # the iteration number k: false first at k = K
            return bound >= trip_count - 1
        step = produced.get(counter)
        if step is None or step.op_type != "Add":
            return False
        for carried, one in permutations(step.input):
            j = next((j for j, i in enumerate(body.input[2:]) if i.name == carried), None)
            if j is None or _scalar(index, constants, one) != 1 or body.output[1 + j].name != counter:
                continue
            start = _scalar(index, constants, loop.input[2 + j])
            return start is not None and bound - start >= trip_count  # c0 + k + 1 < K for every k < M
        return False

    condition = produced.get(body.output[0].name)
    terms = list(condition.input) if condition is not None and condition.op_type == "And" else [body.output[0].name]
    if not all(always_true_before_the_last_step(term) for term in terms):
        return 0
    body.output[0].name = body.input[1].name
    return 1


def _project_inputs_before_loop(graph: onnx.GraphProto, loop: onnx.NodeProto, body: onnx.GraphProto) -> int:
    """`MatMul(Gather(X, t), W) [+ b]` in the body, X, W and b from outside (a recurrent cell's input projection,
    one step at a time) → `Gather(MatMul(X, W) [+ b], t)`: one matrix product over every step before the loop."""
    made_inside = {i.name for i in body.input} | {o for n in body.node for o in n.output}
    produced = {o: n for n in body.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in body.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    taken = {o for n in graph.node for o in n.output} | {t.name for t in graph.initializer} | {i.name for i in graph.input}
    rewrites = 0
    for matmul in [n for n in body.node if n.op_type == "MatMul"]:
        step = produced.get(matmul.input[0])
        weights = matmul.input[1]
        if (step is None or step.op_type != "Gather" or any(a.name == "axis" and a.i != 0 for a in step.attribute)
                or step.input[0] in made_inside or weights in made_inside):
            continue
        last, terms = matmul, []
        add = readers.get(matmul.output[0], [])
        if len(add) == 1 and add[0].op_type == "Add" and matmul.output[0] not in {o.name for o in body.output}:
            bias = next(i for i in add[0].input if i != matmul.output[0])
            if bias not in made_inside:
                last, terms = add[0], [bias]
        projected = _fresh(f"{last.output[0]}/over_all_steps", taken)
        product = _fresh(f"{projected}/matmul", taken | {projected}) if terms else projected
        hoisted = [helper.make_node("MatMul", [step.input[0], weights], [product])]
        if terms:
            hoisted.append(helper.make_node("Add", [product, terms[0]], [projected]))
        for node in hoisted:
            graph.node.insert(list(graph.node).index(loop), node)
        taken.update(o for n in hoisted for o in n.output)
        stepped = _fresh(f"{last.output[0]}/step", taken | made_inside)
        body.node.insert(list(body.node).index(last), helper.make_node("Gather", [projected, step.input[1]],
                                                                       [stepped], axis=0))
        _rename_uses(body, last.output[0], stepped)
        for output in body.output:
            if output.name == last.output[0]:
                output.name = stepped
        rewrites += 1
    return rewrites


def simplify_loops(model: onnx.ModelProto) -> int:
    """For each Loop of the main graph: carried invariants read from outside, invariant body nodes hoisted, the input
    projection done for all steps before the loop, a condition that cannot end the loop before its trip count not
    computed; dead nodes removed. Returns the rewrites made."""
    index, rewrites = _Graph(model, shapes=False), 0
    for loop in [n for n in model.graph.node if n.op_type == "Loop"]:
        body = next(a.g for a in loop.attribute if a.name == "body")
        rewrites += _carry_invariants_from_outside(model.graph, loop, body)
        rewrites += _hoist_invariants(model.graph, loop, body)
        rewrites += _project_inputs_before_loop(model.graph, loop, body)
        rewrites += _drop_redundant_condition(index, loop, body)
        _remove_dead(body)
    remove_dead_nodes(model)
    return rewrites


def use_global_pooling(model: onnx.ModelProto) -> int:
    """ReduceMean over every axis after the first two of a tensor of known rank ≥ 3 (Keras' global average pooling
    and squeeze-excite, once in NCHW) → GlobalAveragePool (+ Flatten when dimensions are not kept): the same mean,
    and onnxruntime runs GlobalAveragePool in its blocked convolution layout instead of converting out of it and
    back around every squeeze-excite block. Returns the reductions replaced."""
    index, rewrites = _Graph(model), 0
    for position, node in enumerate(list(model.graph.node)):
        rank = len(index.shapes.get(node.input[0]) or []) if node.op_type == "ReduceMean" else 0
        axes = _reduction_axes(index, node) if rank >= 3 else None
        if axes is None or sorted(a % rank for a in axes) != list(range(2, rank)):
            continue
        keepdims = next((a.i for a in node.attribute if a.name == "keepdims"), 1)
        output = node.output[0]
        pooled = helper.make_node("GlobalAveragePool", [node.input[0]], [output if keepdims else f"{output}/pooled"],
                                  name=f"{node.name or output}/GlobalAveragePool")
        replacement = [pooled] if keepdims else [pooled, helper.make_node("Flatten", [pooled.output[0]], [output],
                                                                           axis=1, name=f"{node.name or output}/Flatten")]
        index_in_graph = list(model.graph.node).index(node)
        model.graph.node.remove(node)
        for offset, new_node in enumerate(replacement):
            model.graph.node.insert(index_in_graph + offset, new_node)
        rewrites += 1
    return rewrites


def _folded(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    """The value of `name` when it is an initializer or computed by nodes that read only initializers (a bias split
    and squeezed before the loop), evaluated with onnx's reference evaluator; None otherwise."""
    constants = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    needed, pending = [], [name]
    while pending:
        value = pending.pop()
        if value in constants or any(value in n.output for n in needed):
            continue
        node = producers.get(value)
        if node is None or _subgraphs(node) or node.op_type.startswith("Random"):
            return None
        needed.append(node)
        pending.extend(i for i in node.input if i)
    if not needed:
        return numpy_helper.to_array(constants[name]) if name in constants else None
    from onnx.reference import ReferenceEvaluator  # noqa: PLC0415 -- only constant folding needs it
    used = {i for n in needed for i in n.input}
    sub = helper.make_graph(list(reversed(needed)), "fold", [],
                            [helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None)],
                            [constants[i] for i in used if i in constants])
    return np.asarray(ReferenceEvaluator(helper.make_model(sub, opset_imports=[
        helper.make_opsetid("", 17)])).run(None, {})[0])


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
        return None if name in self.producer else _folded(self.graph, name)


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


def _recurrent_op(index: _Graph, loop: onnx.NodeProto) -> list[onnx.NodeProto] | None:
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
    trip, go, start = (_folded(graph, name) for name in loop.input[:3])
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
        bias = _folded(graph, next(i for i in add.input if matmul is None or i != matmul.output[0]))
    else:
        matmul = index.made_by(projected, "MatMul")
    weights = _folded(graph, matmul.input[1]) if matmul is not None else None
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
    index, fusions = _Graph(model), 0
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


PASSES: dict[str, GraphPass] = {
    "neutral_elementwise": remove_neutral_elementwise,
    "shape_simplification": simplify_shapes,
    "layer_norm_fusion": fuse_layer_norm,
    "loop_simplification": simplify_loops,
    "recurrent_fusion": fuse_recurrent_loops,
    "global_pooling": use_global_pooling,
}


def _uses_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def parity_refusal(session: ort.InferenceSession, cases: list[list[np.ndarray]],
                   expected: list[list[np.ndarray]]) -> str | None:
    """None when the candidate model's session computes `expected` (the unoptimised model's outputs) on every case
    within MAX_ABS/MAX_REL; else why not (a case it fails to run counts as a refusal)."""
    try:
        names = [i.name for i in session.get_inputs()]
        for arrays, wanted in zip(cases, expected):
            got = session.run(None, dict(zip(names, arrays)))
            for output, a, b in zip(session.get_outputs(), wanted, got):
                if a.shape != b.shape or a.dtype != b.dtype or not close_enough(a, b, MAX_ABS, MAX_REL):
                    return f"changes output {output.name!r} (batch {len(arrays[0])})"
    except Exception as error:  # noqa: BLE001 -- onnxruntime's pybind errors: the step is refused, saying why
        return f"onnxruntime refuses the rewritten model: {str(error).strip().splitlines()[0][:160]}"
    return None


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
                   ) -> tuple[list[str], dict[str, str]]:
    """Apply `steps` (names in PASSES) to the model at onnx_path one by one, keeping each only if the model it makes
    passes parity_refusal against the unoptimised model's outputs on `cases` and, when `seconds` > 0, speed_ratio < 1
    against the model kept so far (seconds = 0: the steps stand on benchmarks/onnx_vs_keras.py's measurements); the
    result replaces onnx_path.

    Returns (kept steps, {refused step: reason}). Models with external data (> 2 GB) are left as they are."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    if not steps:
        return [], {}
    if _uses_external_data(model):
        return [], {step: "model has external data: not rewritten" for step in steps}
    work = onnx_path.parent / "graph_optimization"
    work.mkdir(exist_ok=True)
    baseline, baseline_session = onnx_path, open_session(onnx_path)
    names = [i.name for i in baseline_session.get_inputs()]
    expected = [baseline_session.run(None, dict(zip(names, arrays))) for arrays in cases]
    kept, refused = [], {}
    for step in steps:
        candidate = copy.deepcopy(model)
        try:
            rewrites = PASSES[step](candidate)
            onnx.checker.check_model(candidate)
        except Exception as error:  # noqa: BLE001 -- a pass that cannot handle this graph is a refusal, not a failure
            refused[step] = f"{type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}"
            continue
        if not rewrites:
            refused[step] = "nothing to rewrite"
            continue
        path = work / f"{step}.onnx"
        onnx.save(candidate, str(path))
        try:
            session = open_session(path)
        except Exception as error:  # noqa: BLE001 -- onnxruntime's pybind errors: the step is refused, saying why
            refused[step] = f"onnxruntime refuses the rewritten model: {str(error).strip().splitlines()[0][:160]}"
            continue
        if reason := parity_refusal(session, cases, expected):
            refused[step] = reason
            continue
        if seconds > 0 and (ratio := speed_ratio(baseline_session, session, timing_cases(cases), seconds)) >= 1.0:
            refused[step] = f"not faster ({ratio:.3f}x the time)"
            continue
        kept.append(f"{step}({rewrites})")
        model, baseline, baseline_session = candidate, path, session
    if kept:
        shutil.copyfile(baseline, onnx_path)
    shutil.rmtree(work, ignore_errors=True)
    return kept, refused
