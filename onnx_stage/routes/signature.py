"""The explicit input signature that loaded Keras 3 models need to be traced (batch dimension left open)."""
import keras
import tensorflow as tf


def keras_input_specs(model: keras.Model) -> list[keras.InputSpec]:
    return [keras.InputSpec(shape=(None, *t.shape[1:]), dtype=t.dtype, name=t.name) for t in model.inputs]


def tf_tensor_specs(model: keras.Model) -> list[tf.TensorSpec]:
    return [tf.TensorSpec(shape=(None, *t.shape[1:]), dtype=t.dtype, name=t.name) for t in model.inputs]
