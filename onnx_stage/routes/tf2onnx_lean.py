"""tf2onnx on the traced graph with the weights kept out of it: memory stays near one copy of the weights.

Plain tf2onnx freezes the variables into the GraphDef and then copies every constant many times over
(TF's freezing re-imports the graph, grappler folds, tf2onnx evaluates constants and deep-copies the whole
graph before each of its optimizers): VGG16's 0.55 GB of weights took more than 24 GB. Here each variable
read becomes a graph input of the weight's shape, tf2onnx converts a weightless graph, and the weights are
attached afterwards as initializers, one at a time. Transposes/casts tf2onnx put on a weight are folded
by onnxruntime's basic (standard-ops-only) graph optimisation.
"""
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import keras
import onnx
import onnxruntime as ort
import tensorflow as tf
import tf2onnx
from tf2onnx import tf_loader
from tf2onnx.convert import _convert_common

from onnx_stage.onnx_files import append_external_tensor, data_file_of, save_onnx
from onnx_stage.routes.signature import tf_tensor_specs

WEIGHT_PREFIX = "weight__"


def convert(model: keras.Model, opset: int) -> onnx.ModelProto:
    specs = tf_tensor_specs(model)

    @tf.function(input_signature=specs, jit_compile=False)
    def serve(*inputs: tf.Tensor):  # noqa: ANN202
        return model(list(inputs) if len(inputs) > 1 else inputs[0], training=False)

    with _xla_functions_traced_inline():
        function = serve.get_concrete_function()
    graph_def, weights = _weights_as_placeholders(function)
    input_names = [t.name for t in function.inputs[:len(specs)]]  # the rest are captures
    output_names = [t.name for t in function.outputs]
    weight_inputs = [f"{name}:0" for name in weights]
    with tf.Graph().as_default():  # grappler needs graph mode
        graph_def = tf_loader.tf_optimize(input_names + weight_inputs, output_names, graph_def)
    with tf.device("/cpu:0"):
        proto, _ = _convert_common(graph_def, name=model.name, opset=opset, continue_on_error=False,
                                   input_names=input_names + weight_inputs, output_names=output_names)
    with tempfile.TemporaryDirectory() as scratch:
        weighted = Path(scratch) / "weighted.onnx"
        _attach_weights(proto, weights, weighted)
        save_onnx(proto, weighted, external=True)
        del proto
        return _fold_weight_transforms(weighted, Path(scratch) / "folded.onnx")


@contextmanager
def _xla_functions_traced_inline() -> Iterator[None]:
    """Keras wraps grouped convolutions (ConvNeXt's depthwise Conv2D) in a nested tf.function(jit_compile=True)
    because TensorFlow's CPU kernels lack them; that call survives freezing as a StatefulPartitionedCall
    onnxruntime rejects. ONNX has grouped Conv, so while tracing such functions are plain Python."""
    original = tf.function

    def function(func=None, **kwargs):  # noqa: ANN001, ANN003, ANN202
        if kwargs.get("jit_compile"):
            return func if func is not None else (lambda inner: inner)
        return original(func, **kwargs)

    tf.function = function
    try:
        yield
    finally:
        tf.function = original


def _weights_as_placeholders(function: tf.types.experimental.ConcreteFunction) -> tuple[tf.compat.v1.GraphDef, dict]:
    """The function's GraphDef with each captured variable a typed Placeholder read through an Identity."""
    graph_def = function.graph.as_graph_def(add_shapes=True)
    if graph_def.library.function:
        raise ValueError("the traced model calls nested TensorFlow functions, which this route does not inline; "
                         "use another route")
    variables = {id(v.handle): v for v in function.graph.variables}
    weights, captured_constants = {}, {}
    for external, internal in function.graph.captures:
        variable = variables.get(id(external))
        if variable is not None:
            weights[WEIGHT_PREFIX + internal.op.name] = (internal.op.name, variable)
        elif external.dtype != tf.resource:  # an eager tensor closed over (e.g. Normalization's mean): inline it
            captured_constants[internal.op.name] = tf.make_tensor_proto(external.numpy())
    by_placeholder = {placeholder: name for name, (placeholder, _) in weights.items()}
    for node in graph_def.node:
        if node.name in captured_constants:
            node.op = "Const"
            node.attr.clear()
            node.attr["dtype"].type = captured_constants[node.name].dtype
            node.attr["value"].tensor.CopyFrom(captured_constants[node.name])
        if node.name in by_placeholder:
            variable = weights[by_placeholder[node.name]][1]
            node.name = by_placeholder[node.name]
            node.attr.clear()
            node.attr["dtype"].type = variable.dtype.as_datatype_enum
            node.attr["shape"].shape.CopyFrom(variable.shape.as_proto())
    for node in graph_def.node:
        node.input[:] = [by_placeholder.get(i, i) for i in node.input]
        if node.op == "ReadVariableOp" and node.input[0] in weights:
            dtype = node.attr["dtype"].type
            node.op = "Identity"
            node.attr.clear()
            node.attr["T"].type = dtype
        elif node.op in ("ReadVariableOp", "ResourceGather", "AssignVariableOp", "VarHandleOp"):
            raise ValueError(f"the traced model uses variables in a way this route cannot externalise ({node.op}); "
                             "use another route")
    return graph_def, {name: variable for name, (_, variable) in weights.items()}


def _attach_weights(proto: onnx.ModelProto, weights: dict, onnx_path: Path) -> None:
    """Each weight goes from TensorFlow straight into onnx_path's external data file: one weight in memory at a time."""
    graph_inputs = {value.name: value for value in proto.graph.input}
    data_file = data_file_of(onnx_path)
    with data_file.open("wb") as data:
        for name, variable in weights.items():
            value = graph_inputs.pop(f"{name}:0", None) or graph_inputs.pop(name, None)
            if value is None:  # tf2onnx dropped an unused weight
                continue
            proto.graph.input.remove(value)
            append_external_tensor(proto.graph.initializer.add(name=value.name), variable.numpy(), data, data_file.name)


def _fold_weight_transforms(source: Path, folded: Path) -> onnx.ModelProto:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(folded)
    options.add_session_config_entry("session.disable_prepacking", "1")  # packed weights would be one more copy
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                     data_file_of(folded).name)  # over 2 GB only external data can be written
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    return onnx.load(str(folded))


def versions() -> dict[str, str]:
    return {"tf2onnx": tf2onnx.__version__, "onnxruntime": ort.__version__}
