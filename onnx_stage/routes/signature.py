"""The model's interface as the routes need it: explicit input signatures (batch dimension left open).

Functional and Sequential models carry `inputs`/`outputs`; a subclassed model loaded from disk has neither,
only the input shape it was built with, so its signature is rebuilt from that.
"""
from dataclasses import dataclass

import keras
import tensorflow as tf


@dataclass(frozen=True)
class Port:
    name: str
    shape: tuple[int | None, ...]
    dtype: str


def input_ports(model: keras.Model) -> list[Port]:
    if is_graph_network(model):
        return [Port(t.name, (None, *t.shape[1:]), str(t.dtype)) for t in model.inputs]
    build_shapes = getattr(model, "_build_shapes_dict", None) or {}
    if not model.built or len(build_shapes) != 1:
        raise ValueError(f"subclassed model {model.name!r} has no known input shape: call it once on real data "
                         "before saving (or save a functional model), so its input shape is stored with it")
    (shape,) = build_shapes.values()
    return [Port("inputs", (None, *shape[1:]), keras.config.floatx())]


def output_ports(model: keras.Model) -> list[Port]:
    """The model's outputs, named after the Keras layers that give them (what `model.output_names` says).

    A layer that gives several of the model's outputs (an LSTM with return_state=True: output, h, c) names
    them `<layer>/<i>`, i being the tensor's index among the layer's outputs: Keras forbids "/" in layer names,
    so these names never collide with another layer's."""
    if is_graph_network(model):
        layers = [t._keras_history.operation.name for t in model.outputs]
        return [Port(layer if layers.count(layer) == 1 else f"{layer}/{t._keras_history.tensor_index}",
                     tuple(t.shape), str(t.dtype)) for layer, t in zip(layers, model.outputs)]
    symbolic = [keras.KerasTensor(p.shape, dtype=p.dtype) for p in input_ports(model)]
    outputs = keras.tree.flatten(model.compute_output_spec(symbolic if len(symbolic) > 1 else symbolic[0]))
    return [Port(f"output_{i}", tuple(t.shape), str(t.dtype)) for i, t in enumerate(outputs)]


def keras_input_specs(model: keras.Model) -> list[keras.InputSpec]:
    return [keras.InputSpec(shape=p.shape, dtype=p.dtype, name=p.name) for p in input_ports(model)]


def tf_tensor_specs(model: keras.Model) -> list[tf.TensorSpec]:
    return [tf.TensorSpec(shape=p.shape, dtype=p.dtype, name=p.name) for p in input_ports(model)]


def is_graph_network(model: keras.Model) -> bool:
    """Functional and Sequential models know their symbolic inputs; subclassed ones raise AttributeError."""
    try:
        return bool(model.inputs)
    except (AttributeError, ValueError):
        return False
