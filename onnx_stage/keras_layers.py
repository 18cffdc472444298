"""Keras layers and what conversion does with them: refused before conversion, or lowered to ops ONNX has.

Runs in the Keras child. `refuse_unrepresentable_layers` names, before any route runs, the first layer no ONNX
model (or no route of this stage) can compute as Keras does, says why and what the user can do. `lowered_layers`
makes the layers whose Keras/TensorFlow implementation has no ONNX counterpart trace into ops that have one, while
the conversion traces the model:

- IntegerLookup (any StaticHashTable with integer keys): the table lookup becomes an equality test against the
  vocabulary (Equal, ArgMax, Gather, Where); Keras' OOV rules (mask token, OOV index, floormod OOV buckets) are
  Keras' own code around it. Memory: batch × length × vocabulary booleans.
- UpSampling2D with bilinear/bicubic interpolation on a dynamic image size: Keras builds the size from the traced
  shape in a way TensorFlow's graph mode rejects; the same tf.image.resize on a size tensor becomes ONNX Resize.
- keras.ops.stft (MelSpectrogram): TensorFlow's RFFT, whose real and imaginary parts tf2onnx cannot convert, becomes
  the real DFT as two strided Conv1Ds with constant windowed cosine/sine kernels, as Keras' STFTSpectrogram does.
- Resizing of a fixed-size image with interpolation area, bicubic, lanczos3 or lanczos5: TensorFlow's exact weights
  (read from TensorFlow by resizing the identity) as two constant MatMuls; area with integer factors as AveragePool.
  (ONNX Resize's cubic differs from TensorFlow's table-based bicubic by up to ~4e-4; it has no area or lanczos.)

The lowering is switched on per thread (the converting one), so the child's concurrent reference predictions still
run Keras' own implementation: parity compares the lowering with Keras, never with itself.
"""
from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras.src import backend as keras_backend
from keras.src.backend.tensorflow import image as tf_image
from keras.src.backend.tensorflow import math as tf_math
from keras.src.layers.reshaping.up_sampling2d import UpSampling2D
from tensorflow.python.ops import lookup_ops

from onnx_stage.routes.signature import is_graph_network

# Minimum ONNX opset of Resize's `antialias` attribute (onnx/defs/tensor/defs.cc, Resize-18).
ANTIALIAS_OPSET = 18
# Preprocessing layers that take or make strings, or hash with FarmHash/SipHash: ONNX has no such ops.
STRING_LAYERS = {"TextVectorization", "StringLookup", "Hashing", "HashedCrossing"}
SPLIT_ADVICE = ("split the model: run this preprocessing before the model (in your serving code or a tf.data "
                "pipeline), register the part after it, which takes the layer's output, and convert that")

_lowering = threading.local()


def refuse_unrepresentable_layers(model: keras.Model, opset: int) -> None:
    """Raise ValueError, one line starting `refused before conversion: <Layer class> layer '<name>'`, for the first
    layer (depth first, nested models included) that no route can convert faithfully at `opset`."""
    for layer in model._flatten_layers(include_self=False, recursive=True):
        reason = _refusal(layer, opset)
        if reason:
            raise ValueError(f"refused before conversion: {type(layer).__name__} layer {layer.name!r} {reason}")


def _refusal(layer: keras.layers.Layer, opset: int) -> str | None:
    """Why `layer` cannot be converted and what to do, or None."""
    kind = type(layer).__name__
    if getattr(layer, "stateful", False):
        return ("is stateful (stateful=True: it carries its state from one call to the next), which an ONNX model, "
                "a function of its inputs alone, cannot do; a stateless twin would silently forget the state: "
                "build the same model with stateful=False and return_state=True, copy the weights into it "
                "(new.set_weights(model.get_weights())), register and convert that one, and pass the states back "
                "in yourself (initial_state)")
    if kind in STRING_LAYERS:
        return (f"works on strings or string hashes (FarmHash/SipHash), which standard ONNX ops cannot compute as "
                f"TensorFlow does: {SPLIT_ADVICE}")
    if kind == "IntegerLookup" and layer.num_oov_indices > 1 and layer.oov_method == "farmhash":
        return f"hashes out-of-vocabulary ids with FarmHash, which ONNX has no op for: use oov_method='floormod' or {SPLIT_ADVICE}"
    if kind == "IntegerLookup" and layer.num_oov_indices == 0 and not layer.invert:
        return ("has num_oov_indices=0, so Keras raises on an id outside its vocabulary, which an ONNX model cannot "
                "do (it would answer -1): set num_oov_indices=1, so that such ids map to the OOV index")
    interpolation = getattr(layer, "interpolation", None)
    if kind == "Resizing" and getattr(layer, "antialias", False) and opset < ANTIALIAS_OPSET \
            and interpolation in ("bilinear", "bicubic"):
        return (f"resizes with antialias=True, which ONNX Resize only has from opset {ANTIALIAS_OPSET} "
                f"(its antialias attribute); this run targets opset {opset}: convert with "
                f"--set convert.opset={ANTIALIAS_OPSET}")
    dynamic = kind == "UpSampling2D" or (kind == "Resizing" and _dynamic_image_size(layer))
    if dynamic and interpolation in ("area", "lanczos3", "lanczos5") and kind == "Resizing":
        return (f"resizes a dynamic-size image with interpolation={interpolation!r}, which ONNX Resize has no mode "
                "for; this stage computes it as constant matrices, which need the input size: give the model a "
                "fixed input size, or use 'bilinear'")
    if kind == "UpSampling2D" and interpolation in ("lanczos3", "lanczos5"):
        return (f"uses interpolation={interpolation!r}, which ONNX Resize has no mode for (nearest, linear, cubic "
                "only) and the upsampled size is not known before the model runs: use 'bilinear' or 'bicubic'")
    if dynamic and interpolation == "bicubic" and not _sampled_exactly(layer):
        why = ("where TensorFlow rounds sample positions to 1/1024 pixel (its coefficient table) and ONNX Resize does "
               "not: they differ by up to ~4e-4 unless the scale is a power of two")
        if kind == "UpSampling2D":  # lowered through a size tensor whatever the input size
            return (f"upsamples bicubically by {tuple(layer.size)}, {why}: use a power-of-two factor, 'bilinear', "
                    "or on a fixed input size a Resizing(interpolation='bicubic') layer to the upsampled size")
        return f"resizes a dynamic-size image bicubically, {why}: use 'bilinear' or a fixed input size"
    return None


def _sampled_exactly(layer: keras.layers.Layer) -> bool:
    """Whether an upsampling's half-pixel sample positions fall on TensorFlow's 1/1024 bicubic table (powers of 2)."""
    factors = getattr(layer, "size", (0,))
    return all(f > 0 and f & (f - 1) == 0 for f in factors)


def _dynamic_image_size(layer: keras.layers.Layer) -> bool:
    shape = tuple(layer.input.shape) if layer._inbound_nodes else ()
    return any(d is None for d in shape[1:-1])


@contextmanager
def lowered_layers() -> Iterator[None]:
    """While this thread traces the model, the layers listed in the module docstring trace into ONNX-friendly ops."""
    _lowering.active = True
    try:
        yield
    finally:
        _lowering.active = False


def _when_lowering(lowered: Callable[..., Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate the original: call `lowered` instead in a thread inside lowered_layers() (when it does not decline
    by returning NotImplemented)."""
    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def dispatch(*args: Any, **kwargs: Any) -> Any:
            if getattr(_lowering, "active", False):
                result = lowered(*args, **kwargs)
                if result is not NotImplemented:
                    return result
            return original(*args, **kwargs)

        return dispatch

    return wrap


def _table_lookup(table: lookup_ops.InitializableLookupTableBase, keys: tf.Tensor, name: str | None = None) -> Any:
    """StaticHashTable.lookup for integer keys as an equality test against the table's (constant) contents."""
    if not keys.dtype.is_integer or isinstance(keys, (tf.SparseTensor, tf.RaggedTensor)):
        return NotImplemented
    with tf.init_scope():  # read the table's contents eagerly: they become constants of the traced graph
        table_keys, table_values = (t.numpy() for t in table.export())
    if not len(table_keys):
        return tf.fill(tf.shape(keys), tf.constant(table.default_value, table_values.dtype))
    matches = tf.equal(tf.expand_dims(keys, -1), tf.constant(table_keys, keys.dtype))
    position = tf.argmax(tf.cast(matches, tf.int32), axis=-1)
    found = tf.gather(tf.constant(table_values), position)
    default = tf.cast(table.default_value, found.dtype)
    return tf.where(tf.reduce_any(matches, axis=-1), found, default)


def _upsample(layer: UpSampling2D, x: tf.Tensor, height_factor: int, width_factor: int, data_format: str,
              interpolation: str = "nearest") -> Any:
    """UpSampling2D's resize with the target size as a tensor (shape × factors), which graph mode accepts."""
    if interpolation == "nearest":
        return NotImplemented
    if data_format == "channels_first":
        x = tf.transpose(x, [0, 2, 3, 1])
    size = tf.shape(x)[1:3] * tf.constant([height_factor, width_factor])
    x = tf.image.resize(x, size, method=interpolation)
    return tf.transpose(x, [0, 3, 1, 2]) if data_format == "channels_first" else x


def _resize(images: tf.Tensor, size: Any, interpolation: str = "bilinear", antialias: bool = False,
            crop_to_aspect_ratio: bool = False, pad_to_aspect_ratio: bool = False, fill_mode: str = "constant",
            fill_value: float = 0.0, data_format: str | None = None) -> Any:
    """Keras' resize of a batch of fixed-size images with TensorFlow's own weights as constant matrix products (an
    integer-factor area resize as AveragePool). Declines (NotImplemented) where ONNX Resize already computes what
    TensorFlow does: nearest, bilinear, and antialiased bilinear/bicubic (Resize-18's antialias)."""
    exact_in_onnx = interpolation in ("nearest", "bilinear") or (antialias and interpolation == "bicubic")
    if exact_in_onnx or crop_to_aspect_ratio or pad_to_aspect_ratio or len(images.shape) != 4:
        return NotImplemented
    channels_first = keras_backend.standardize_data_format(data_format) == "channels_first"
    x = tf.transpose(images, [0, 2, 3, 1]) if channels_first else images
    (height, width), (out_height, out_width) = x.shape[1:3], tuple(int(s) for s in size)
    if height is None or width is None:
        return NotImplemented
    x = tf.cast(x, tf.float32)
    if interpolation == "area" and height % out_height == 0 and width % out_width == 0:
        window = (height // out_height, width // out_width)
        resized = tf.nn.avg_pool2d(x, window, window, "VALID")
    else:
        rows = resize_weights(height, out_height, interpolation, antialias)
        columns = resize_weights(width, out_width, interpolation, antialias)
        nchw = tf.matmul(tf.transpose(x, [0, 3, 1, 2]), tf.constant(columns.T))
        resized = tf.transpose(tf.matmul(tf.constant(rows), nchw), [0, 2, 3, 1])
    return tf.transpose(resized, [0, 3, 1, 2]) if channels_first else resized


def resize_weights(size: int, out_size: int, interpolation: str, antialias: bool) -> np.ndarray:
    """(out_size, size) float32 matrix M with resize(x) = M @ x along one axis, read from TensorFlow itself: the
    resize of the identity (column j: pixel j lit). TensorFlow's resizes are separable, so two such products are the
    2-D resize, with its exact kernels (bicubic's 1/1024-pixel coefficient table, area's box overlaps, lanczos)."""
    with tf.init_scope():
        identity = tf.eye(size, dtype=tf.float32)[None, :, None, :]  # (1, size, 1, size): channel j lights pixel j
        resized = tf.image.resize(identity, (out_size, 1), method=interpolation, antialias=antialias)
        return resized.numpy()[0, :, 0, :]


def _stft(x: tf.Tensor, sequence_length: int, sequence_stride: int, fft_length: int, window: Any = "hann",
          center: bool = True) -> Any:
    """Keras' stft (keras/src/backend/tensorflow/math.py: reflect-padded by fft_length // 2 when centred, the window
    zero-padded to fft_length in the middle) with the real DFT as two strided Conv1Ds whose constant kernels are the
    windowed cosines and negated sines, as Keras' own STFTSpectrogram computes it: no complex tensor, so no RFFT."""
    if x.shape.rank is None or x.dtype not in (tf.float32, tf.float64) or fft_length < sequence_length:
        return NotImplemented
    x = tf.convert_to_tensor(x)
    if center:
        half = fft_length // 2
        x = tf.pad(x, [[0, 0]] * (x.shape.rank - 1) + [[half, half]], mode="REFLECT")
    with tf.init_scope():
        if window is None:
            weights = np.ones(sequence_length)
        elif isinstance(window, str):
            make = {"hann": tf.signal.hann_window, "hamming": tf.signal.hamming_window}.get(window)
            if make is None:
                return NotImplemented
            weights = make(sequence_length, periodic=True, dtype=tf.float64).numpy()
        else:
            weights = np.asarray(keras.ops.convert_to_numpy(window), dtype=np.float64)
    left = (fft_length - sequence_length) // 2
    padded = np.zeros(fft_length)
    padded[left:left + sequence_length] = weights
    angles = 2 * np.pi * np.outer(np.arange(fft_length), np.arange(fft_length // 2 + 1)) / fft_length
    dtype = x.dtype.as_numpy_dtype
    signal = tf.expand_dims(tf.reshape(x, [-1, tf.shape(x)[-1]]), -1)  # (rows, time, 1)
    parts = [tf.nn.conv1d(signal, tf.constant((padded[:, None] * basis)[:, None, :].astype(dtype)), sequence_stride,
                          "VALID") for basis in (np.cos(angles), -np.sin(angles))]
    frames_shape = tf.concat([tf.shape(x)[:-1], tf.shape(parts[0])[1:]], axis=0)
    return tuple(tf.reshape(part, frames_shape) for part in parts)


def _install() -> None:
    """Wrap the originals once, on import; they behave as before outside lowered_layers()."""
    base = lookup_ops.InitializableLookupTableBase
    base.lookup = _when_lowering(_table_lookup)(base.lookup)
    UpSampling2D._resize_images = _when_lowering(_upsample)(UpSampling2D._resize_images)
    tf_image.resize = _when_lowering(_resize)(tf_image.resize)
    tf_math.stft = _when_lowering(_stft)(tf_math.stft)


_install()


def state_feedback(model: keras.Model) -> list[tuple[int, int]]:
    """(output index, input index) pairs of a model that hands its recurrent state back to its caller: an RNN layer
    (return_state=True) whose initial_state comes from a model input and whose state goes out as a model output. A
    caller runs such a model step by step, feeding each call's states into the next; validation does the same."""
    if not is_graph_network(model):  # a subclassed model has no layer graph to follow
        return []
    inputs, outputs = list(model.inputs), list(model.outputs)
    pairs = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not isinstance(layer, keras.layers.RNN) or not getattr(layer, "return_state", False):
            continue
        for node in layer._inbound_nodes:
            initial = keras.tree.flatten(node.arguments.kwargs.get("initial_state") or [])
            states = node.outputs[len(node.outputs) - len(initial):] if initial else []
            for given, returned in zip(initial, states):
                into = [i for i, t in enumerate(inputs) if t is given]
                out = [i for i, t in enumerate(outputs) if t is returned]
                if into and out:
                    pairs.append((out[0], into[0]))
    return pairs
