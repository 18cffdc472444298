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
    if is_graph_network(model):
        return [Port(t._keras_history.operation.name, tuple(t.shape), str(t.dtype)) for t in model.outputs]
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
