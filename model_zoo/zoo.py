"""The conversion test zoo: small Keras models, one per layer family, plus keras.applications architectures.

Shared by tests/integration/test_zoo.py and benchmarks/coverage.py. Importing this module does not import
Keras (the flow process must stay free of TensorFlow): builders import it when called, and
`python -m model_zoo.zoo OUT_DIR NAME...` builds and saves models as OUT_DIR/NAME.keras in a child.
Application models always use random weights (`weights=None`): nothing is downloaded.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

CUSTOM_LAYERS_MODULE = "model_zoo.custom_layers"


@dataclass(frozen=True)
class ZooModel:
    name: str
    family: str
    build: Callable[[], Any]
    in_ci: bool = True
    custom_objects: bool = False  # needs CUSTOM_LAYERS_MODULE imported before loading


def _keras() -> Any:
    import keras

    keras.utils.set_random_seed(0)
    return keras


def dense() -> Any:
    keras = _keras()
    return keras.Sequential([keras.Input((20,), name="features"), keras.layers.Dense(32, activation="relu"),
                             keras.layers.Dropout(0.2), keras.layers.Dense(5, activation="softmax")], name="dense")


def conv1d() -> Any:
    keras = _keras()
    return keras.Sequential([keras.Input((32, 4), name="signal"), keras.layers.Conv1D(8, 3, activation="relu"),
                             keras.layers.MaxPooling1D(2), keras.layers.Conv1D(8, 3, dilation_rate=2),
                             keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(3)], name="conv1d")


def conv2d() -> Any:
    keras = _keras()
    return keras.Sequential([keras.Input((16, 16, 3), name="image"),
                             keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu"),
                             keras.layers.Conv2D(8, 3, padding="valid"), keras.layers.Flatten(),
                             keras.layers.Dense(4)], name="conv2d")


def conv3d() -> Any:
    keras = _keras()
    return keras.Sequential([keras.Input((8, 8, 8, 2), name="volume"), keras.layers.Conv3D(4, 3, activation="relu"),
                             keras.layers.MaxPooling3D(2), keras.layers.GlobalAveragePooling3D(),
                             keras.layers.Dense(3)], name="conv3d")


def depthwise_separable() -> Any:
    keras = _keras()
    return keras.Sequential([keras.Input((16, 16, 4), name="image"), keras.layers.DepthwiseConv2D(3, padding="same"),
                             keras.layers.SeparableConv2D(8, 3, activation="relu"),
                             keras.layers.Reshape((14 * 14, 8)),
                             keras.layers.SeparableConv1D(4, 3), keras.layers.GlobalMaxPooling1D(),
                             keras.layers.Dense(3)], name="depthwise_separable")


def transposed_conv() -> Any:
    keras = _keras()
    return keras.Sequential([keras.Input((8, 8, 4), name="latent"),
                             keras.layers.Conv2DTranspose(8, 3, strides=2, padding="same", activation="relu"),
                             keras.layers.Conv2DTranspose(2, 3, padding="valid"),
                             keras.layers.Reshape((18, 18 * 2)), keras.layers.Conv1DTranspose(3, 3, strides=2)],
                            name="transposed_conv")


def pooling() -> Any:
    keras = _keras()
    image = keras.Input((16, 16, 3), name="image")
    x = keras.layers.MaxPooling2D(2)(image)
    x = keras.layers.AveragePooling2D(2, strides=1, padding="same")(x)
    x = keras.layers.ZeroPadding2D(1)(x)
    x = keras.layers.Cropping2D(1)(x)
    x = keras.layers.UpSampling2D(2)(x)
    pooled = keras.layers.Concatenate()([keras.layers.GlobalAveragePooling2D()(x),
                                         keras.layers.GlobalMaxPooling2D()(x)])
    return keras.Model(image, keras.layers.Dense(4)(pooled), name="pooling")


def normalization() -> Any:
    keras = _keras()
    image = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(8, 3)(image)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Activation("swish")(x)
    x = keras.layers.LayerNormalization()(x)
    x = keras.layers.GroupNormalization(groups=4)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(image, keras.layers.Dense(3)(x), name="normalization")
    _randomise_batchnorm_statistics(model)
    return model


def recurrent() -> Any:
    keras = _keras()
    sequence = keras.Input((10, 6), name="sequence")
    x = keras.layers.LSTM(8, return_sequences=True)(sequence)
    x = keras.layers.GRU(8, return_sequences=True)(x)
    x = keras.layers.Bidirectional(keras.layers.LSTM(4))(x)
    return keras.Model(sequence, keras.layers.Dense(2)(x), name="recurrent")


def simple_rnn_bidirectional_gru() -> Any:
    keras = _keras()
    sequence = keras.Input((10, 6), name="sequence")
    x = keras.layers.Bidirectional(keras.layers.GRU(6, return_sequences=True), merge_mode="sum")(sequence)
    x = keras.layers.SimpleRNN(5)(x)
    return keras.Model(sequence, keras.layers.Dense(2)(x), name="rnn_bidirectional_gru")


def attention() -> Any:
    keras = _keras()
    query, value = keras.Input((6, 8), name="query"), keras.Input((9, 8), name="value")
    dot = keras.layers.Attention()([query, value])
    additive = keras.layers.AdditiveAttention()([query, value])
    x = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)(dot + additive, value)
    return keras.Model([query, value], keras.layers.GlobalAveragePooling1D()(x), name="attention")


def transformer_block() -> Any:
    keras = _keras()
    tokens = keras.Input((12,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(50, 16)(tokens)
    attended = keras.layers.MultiHeadAttention(num_heads=4, key_dim=4)(x, x, use_causal_mask=True)
    x = keras.layers.LayerNormalization()(x + attended)
    x = keras.layers.LayerNormalization()(x + keras.layers.Dense(16, activation="gelu")(x))
    return keras.Model(tokens, keras.layers.Dense(50)(x), name="transformer_block")


def embedding_masking() -> Any:
    keras = _keras()
    tokens = keras.Input((12,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(40, 8, mask_zero=True)(tokens)
    x = keras.layers.LSTM(6)(x)
    return keras.Model(tokens, keras.layers.Dense(3, activation="softmax")(x), name="embedding_masking")


def masking_layer() -> Any:
    keras = _keras()
    sequence = keras.Input((10, 4), name="sequence")
    x = keras.layers.Masking(mask_value=0.0)(sequence)
    x = keras.layers.GRU(6)(x)
    return keras.Model(sequence, keras.layers.Dense(2)(x), name="masking_layer")


def preprocessing() -> Any:
    keras = _keras()
    import numpy as np

    normalizer = keras.layers.Normalization()
    normalizer.adapt(np.random.default_rng(0).normal(3.0, 2.0, size=(64, 6)).astype("float32"))
    features, image = keras.Input((6,), name="features"), keras.Input((8, 8, 3), name="image")
    pixels = keras.layers.Rescaling(1 / 255.0, offset=-0.5)(image)
    pixels = keras.layers.Resizing(4, 4)(pixels)
    x = keras.layers.Concatenate()([normalizer(features), keras.layers.Flatten()(pixels)])
    return keras.Model([features, image], keras.layers.Dense(3)(x), name="preprocessing")


def time_distributed() -> Any:
    keras = _keras()
    frames = keras.Input((4, 8, 8, 1), name="frames")
    x = keras.layers.TimeDistributed(keras.layers.Conv2D(4, 3, activation="relu"))(frames)
    x = keras.layers.TimeDistributed(keras.layers.GlobalAveragePooling2D())(x)
    x = keras.layers.TimeDistributed(keras.layers.Dense(5))(x)
    return keras.Model(frames, x, name="time_distributed")


def multi_input_output() -> Any:
    keras = _keras()
    numbers, image = keras.Input((7,), name="numbers"), keras.Input((12, 12, 1), name="image")
    seen = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(image))
    shared = keras.layers.Dense(16, activation="relu")(keras.layers.Concatenate()([numbers, seen]))
    label = keras.layers.Dense(4, activation="softmax", name="label")(shared)
    score = keras.layers.Dense(1, name="score")(shared)
    mask = keras.layers.Conv2D(1, 1, activation="sigmoid", name="mask")(image)
    return keras.Model([numbers, image], [label, score, mask], name="multi_input_output")


def merge_and_reshape() -> Any:
    keras = _keras()
    a, b = keras.Input((4, 6), name="a"), keras.Input((4, 6), name="b")
    merged = [keras.layers.Add()([a, b]), keras.layers.Subtract()([a, b]), keras.layers.Multiply()([a, b]),
              keras.layers.Maximum()([a, b]), keras.layers.Minimum()([a, b]), keras.layers.Average()([a, b])]
    x = keras.layers.Concatenate(axis=-1)(merged)
    x = keras.layers.Permute((2, 1))(x)
    x = keras.layers.Reshape((-1,))(x)
    x = keras.layers.RepeatVector(2)(keras.layers.Dense(3)(x))
    x = keras.layers.Dot(axes=(2, 2))([x, x])
    return keras.Model([a, b], keras.layers.Flatten()(x), name="merge_and_reshape")


def activations() -> Any:
    keras = _keras()
    inputs = keras.Input((10,), name="features")
    x = keras.layers.Dense(12)(inputs)
    x = keras.layers.LeakyReLU(negative_slope=0.1)(x)
    x = keras.layers.PReLU()(x)
    x = keras.layers.ELU()(x)
    x = keras.layers.Activation("selu")(x)
    x = keras.layers.Activation("gelu")(x)
    x = keras.layers.Activation("hard_sigmoid")(x)
    x = keras.layers.Activation("softplus")(x)
    x = keras.layers.ReLU(max_value=6.0)(x)
    return keras.Model(inputs, keras.layers.Softmax()(keras.layers.Dense(4)(x)), name="activations")


def subclassed() -> Any:
    from model_zoo.custom_layers import TinyResidualClassifier

    _keras()
    import numpy as np

    model = TinyResidualClassifier(hidden=16, classes=3)
    model(np.zeros((1, 10), "float32"))  # built models save their input shape; unbuilt ones cannot be traced
    return model


def custom_layer() -> Any:
    from model_zoo.custom_layers import ScaledSwish

    keras = _keras()
    inputs = keras.Input((8,), name="features")
    x = ScaledSwish(scale=1.5, name="scaled_swish")(keras.layers.Dense(8)(inputs))
    return keras.Model(inputs, keras.layers.Dense(2)(x), name="custom_layer")


def _randomise_batchnorm_statistics(model: Any) -> None:
    """Fresh BatchNormalization layers compute the identity; random statistics make the parity check real."""
    import numpy as np

    rng = np.random.default_rng(0)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.2, beta.shape),
                               rng.normal(0, 0.2, mean.shape), rng.uniform(0.5, 1.5, variance.shape)])


def application(name: str, **kwargs: Any) -> Callable[[], Any]:
    def build() -> Any:
        keras = _keras()
        return getattr(keras.applications, name)(weights=None, **kwargs)

    build.__name__ = name
    return build


LAYER_FAMILIES = [
    ZooModel("dense", "dense", dense),
    ZooModel("conv1d", "conv 1D", conv1d),
    ZooModel("conv2d", "conv 2D", conv2d),
    ZooModel("conv3d", "conv 3D", conv3d),
    ZooModel("depthwise_separable", "depthwise / separable conv", depthwise_separable),
    ZooModel("transposed_conv", "transposed conv", transposed_conv),
    ZooModel("pooling", "pooling, padding, cropping, upsampling", pooling),
    ZooModel("normalization", "batch / layer / group normalization", normalization),
    ZooModel("recurrent", "LSTM / GRU / bidirectional", recurrent),
    ZooModel("rnn_bidirectional_gru", "bidirectional GRU, SimpleRNN", simple_rnn_bidirectional_gru),
    ZooModel("attention", "Attention, AdditiveAttention, MultiHeadAttention", attention),
    ZooModel("transformer_block", "embedding + causal MultiHeadAttention", transformer_block),
    ZooModel("embedding_masking", "embedding with mask_zero → LSTM", embedding_masking),
    ZooModel("masking_layer", "Masking → GRU", masking_layer),
    ZooModel("preprocessing", "Rescaling, Normalization, Resizing", preprocessing),
    ZooModel("time_distributed", "TimeDistributed", time_distributed),
    ZooModel("multi_input_output", "multi-input / multi-output functional", multi_input_output),
    ZooModel("merge_and_reshape", "merge layers, Permute, RepeatVector, Dot", merge_and_reshape),
    ZooModel("activations", "activation layers", activations),
    ZooModel("subclassed", "subclassed model", subclassed, custom_objects=True),
    ZooModel("custom_layer", "custom registered layer", custom_layer, custom_objects=True),
]

APPLICATIONS = [
    ZooModel("MobileNetV3Small_96", "keras.applications (CI size)",
             application("MobileNetV3Small", input_shape=(96, 96, 3), classes=10)),
    ZooModel("EfficientNetB0_64", "keras.applications (CI size)",
             application("EfficientNetB0", input_shape=(64, 64, 3), classes=10)),
    # weights=None leaves MobileNetV3's image size open (None × None); fix it to the size it was designed for
    *(ZooModel(name, "keras.applications", application(name, input_shape=(224, 224, 3)), in_ci=False)
      for name in ["MobileNetV3Small", "MobileNetV3Large"]),
    *(ZooModel(name, "keras.applications", application(name), in_ci=False) for name in [
        "MobileNet", "MobileNetV2", "EfficientNetB0", "EfficientNetV2B0",
        "ResNet50", "ResNet50V2", "DenseNet121", "InceptionV3", "Xception", "NASNetMobile", "EfficientNetB1",
        "ConvNeXtTiny", "VGG16",
    ]),
]

ZOO: dict[str, ZooModel] = {model.name: model for model in [*LAYER_FAMILIES, *APPLICATIONS]}


def save_models(out_dir: Path, names: list[str]) -> None:
    """Build and save each named model (of ZOO or user_models.USER_MODELS) as out_dir/NAME.keras (runs where Keras
    may be imported)."""
    from model_zoo.user_models import USER_MODELS

    out_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        (ZOO[name] if name in ZOO else USER_MODELS[name]).build().save(out_dir / f"{name}.keras")


def save_models_in_child(out_dir: Path, names: list[str]) -> None:
    """save_models in a child process (`python -m model_zoo.zoo`), so the caller never imports Keras."""
    import subprocess

    subprocess.run([sys.executable, "-m", "model_zoo.zoo", str(out_dir), *names], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    save_models(Path(sys.argv[1]), sys.argv[2:])
