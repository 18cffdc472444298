"""The `loop_simplification` step: tf2onnx's while loops of recurrent layers it does not fuse (Keras 3 GRU, SimpleRNN):
the weights it carries through every iteration read from outside the loop instead, body nodes that read only
constants hoisted in front of it, the input projection done for all steps at once before it, and a loop condition
that cannot end the loop before its constant trip count no longer computed every step.
"""
from __future__ import annotations

from itertools import permutations

import onnx
from onnx import helper, numpy_helper

from onnx_stage.graph_passes.graph_index import Graph, remove_dead, remove_dead_nodes, rename_uses, subgraphs


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
        rename_uses(body, inside, initial)
        if final:
            rename_uses(graph, final, initial)
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
        rename_uses(body, old, new)
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
                        if not subgraphs(n) and not n.op_type.startswith("Random") and n.op_type != "Multinomial"
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


def _scalar(index: Graph, body_constants: dict[str, onnx.TensorProto], name: str) -> float | None:
    tensor = body_constants.get(name)
    value = numpy_helper.to_array(tensor) if tensor is not None else index.const(name)
    return float(value.reshape(())) if value is not None and value.size == 1 else None


def _drop_redundant_condition(index: Graph, loop: onnx.NodeProto, body: onnx.GraphProto) -> int:
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
        rename_uses(body, last.output[0], stepped)
        for output in body.output:
            if output.name == last.output[0]:
                output.name = stepped
        rewrites += 1
    return rewrites


def simplify_loops(model: onnx.ModelProto) -> int:
    """For each Loop of the main graph: carried invariants read from outside, invariant body nodes hoisted, the input
    projection done for all steps before the loop, a condition that cannot end the loop before its trip count not
    computed; dead nodes removed. Returns the rewrites made."""
    index, rewrites = Graph(model, shapes=False), 0
    for loop in [n for n in model.graph.node if n.op_type == "Loop"]:
        body = next(a.g for a in loop.attribute if a.name == "body")
        rewrites += _carry_invariants_from_outside(model.graph, loop, body)
        rewrites += _hoist_invariants(model.graph, loop, body)
        rewrites += _project_inputs_before_loop(model.graph, loop, body)
        rewrites += _drop_redundant_condition(index, loop, body)
        remove_dead(body)
    remove_dead_nodes(model)
    return rewrites
