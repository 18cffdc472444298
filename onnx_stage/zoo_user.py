"""Models users really bring (issue 13): dynamic image sizes, preprocessing layers, stateful RNNs, resize modes.

Each model states the outcome the stage must reach: `converts` (and passes parity), or `refused: <Layer>` (the
stage refuses before converting, naming the layer). Shared by tests/integration/test_user_models.py and
benchmarks/coverage.py (`--user-models`). Like onnx_stage/zoo.py, importing it does not import Keras; `python -m
onnx_stage.zoo OUT_DIR NAME...` builds these too. Random weights, nothing downloaded.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from onnx_stage.zoo import _keras


@dataclass(frozen=True)
class UserModel:
    name: str
    build: Callable[[], Any]
    expected: str  # "converts", or "refused: <Keras layer class>"
    opset: int = 17
    in_ci: bool = True


def mobilenet_v3(variant: str) -> Callable[[], Any]:
    def build() -> Any:
        keras = _keras()
        return getattr(keras.applications, variant)(weights=None, input_shape=(None, None, 3), classes=10)

    build.__name__ = variant
    return build


def bilinear_upsampling() -> Any:
    keras = _keras()
    image = keras.Input((None, None, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(image)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.UpSampling2D(2, interpolation="bilinear")(x)
    return keras.Model(image, keras.layers.Conv2D(2, 3, padding="same")(x), name="bilinear_upsampling")


def upsampling_modes() -> Any:
    """Every UpSampling2D interpolation Keras offers, on a dynamic image size."""
    keras = _keras()
    image = keras.Input((None, None, 2), name="image")
    x = keras.layers.MaxPooling2D(2)(image)
    branches = [keras.layers.UpSampling2D(2, interpolation=mode)(x)
                for mode in ["nearest", "bilinear", "bicubic", "lanczos3", "lanczos5", "area"]]
    return keras.Model(image, keras.layers.Concatenate()(branches), name="upsampling_modes")


def stateful_lstm() -> Any:
    keras = _keras()
    sequence = keras.Input((3, 1), batch_size=1, name="sequence")
    x = keras.layers.LSTM(2, return_sequences=True, stateful=True, name="lstm")(sequence)
    return keras.Model(sequence, x, name="stateful_lstm")


def text_vectorization() -> Any:
    keras = _keras()
    text = keras.Input((1,), dtype="string", name="text")
    x = keras.layers.TextVectorization(vocabulary=["the", "cat", "sat", "on", "mat"], output_sequence_length=6,
                                       name="vectorize")(text)
    x = keras.layers.Embedding(8, 4)(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(text, keras.layers.Dense(2)(x), name="text_vectorization")


def integer_lookup() -> Any:
    keras = _keras()
    ids = keras.Input((5,), dtype="int64", name="ids")
    x = keras.layers.IntegerLookup(vocabulary=[12, 7, 99, 3], name="lookup")(ids)
    x = keras.layers.Embedding(6, 3)(x)
    return keras.Model(ids, keras.layers.Flatten()(x), name="integer_lookup")


def discretization_one_hot() -> Any:
    keras = _keras()
    values = keras.Input((1,), name="values")
    x = keras.layers.Discretization(bin_boundaries=[0.0, 1.0, 2.0], name="bucketize")(values)
    x = keras.layers.CategoryEncoding(num_tokens=4, output_mode="one_hot", name="one_hot")(x)
    return keras.Model(values, keras.layers.Dense(2)(x), name="discretization_one_hot")


def category_encodings() -> Any:
    keras = _keras()
    ids = keras.Input((4,), dtype="int32", name="ids")
    outputs = [keras.layers.CategoryEncoding(num_tokens=6, output_mode=mode, name=f"encode_{mode}")(ids)
               for mode in ["multi_hot", "count"]]
    return keras.Model(ids, outputs, name="category_encodings")


def resizing(name: str, height: int, width: int, input_hw: tuple[int, int], **kwargs: Any) -> Callable[[], Any]:
    def build() -> Any:
        keras = _keras()
        image = keras.Input((*input_hw, 3), name="image")
        x = keras.layers.Resizing(height, width, name="resize", **kwargs)(image)
        return keras.Model(image, keras.layers.Conv2D(2, 3)(x), name=name)

    build.__name__ = name
    return build


USER_MODELS_LIST = [
    UserModel("MobileNetV3Small_dynamic", mobilenet_v3("MobileNetV3Small"), "converts"),
    UserModel("MobileNetV3Large_dynamic", mobilenet_v3("MobileNetV3Large"), "converts", in_ci=False),
]

USER_MODELS: dict[str, UserModel] = {model.name: model for model in USER_MODELS_LIST}
