"""Models users really bring (issue 13): dynamic image sizes, preprocessing layers, stateful RNNs, resize modes.

Each model states the outcome the stage must reach: `converts` (and passes parity), or `refused: <Layer>` (the
stage refuses before converting, naming the layer). Shared by tests/integration/test_user_models.py and
benchmarks/coverage.py (`--user-models`). Like model_zoo/zoo.py, importing it does not import Keras; `python -m
model_zoo.zoo OUT_DIR NAME...` builds these too. Random weights, nothing downloaded.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from model_zoo.zoo import _keras


@dataclass(frozen=True)
class UserModel:
    name: str
    build: Callable[[], Any]
    expected: str  # "converts", "refused: <Keras layer class>", or "keras cannot load" (Keras' own bug)
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


def upsampling(name: str, modes: list[str], factor: tuple[int, int] = (2, 4)) -> Callable[[], Any]:
    """UpSampling2D with each of `modes` on a dynamic image size, concatenated."""
    def build() -> Any:
        keras = _keras()
        image = keras.Input((None, None, 2), name="image")
        x = keras.layers.MaxPooling2D(2)(image)
        branches = [keras.layers.UpSampling2D(factor, interpolation=mode, name=f"up_{mode}")(x) for mode in modes]
        return keras.Model(image, keras.layers.Concatenate()(branches), name=name)

    build.__name__ = name
    return build


def resize_modes(name: str, modes: list[str]) -> Callable[[], Any]:
    """Resizing to 20×25 with each of `modes` on a 30×40 image (down) and to 45×50 (up), concatenated per size."""
    def build() -> Any:
        keras = _keras()
        image = keras.Input((30, 40, 2), name="image")
        outputs = [keras.layers.Concatenate(name=f"{name}_{h}x{w}")(
                       [keras.layers.Resizing(h, w, interpolation=mode, name=f"resize_{mode}_{h}")(image)
                        for mode in modes]) for h, w in [(20, 25), (45, 50)]]
        return keras.Model(image, outputs, name=name)

    build.__name__ = name
    return build


def conv1d_dynamic_length() -> Any:
    """A dynamic-length signal through a kernel of 5: Keras itself rejects the configured length 3."""
    keras = _keras()
    signal = keras.Input((None, 4), name="signal")
    x = keras.layers.Conv1D(6, 5, activation="relu")(signal)
    return keras.Model(signal, keras.layers.Dense(2)(keras.layers.GlobalMaxPooling1D()(x)), name="conv1d_dynamic")


def mel_spectrogram() -> Any:
    """Speech-style log-mel features: a 400-sample Hamming window in a 512-point FFT, 160-sample hop."""
    keras = _keras()
    audio = keras.Input((4000,), name="audio")
    x = keras.layers.MelSpectrogram(fft_length=512, sequence_length=400, sequence_stride=160, window="hamming",
                                    sampling_rate=16000, num_mel_bins=40, name="mel")(audio)
    return keras.Model(audio, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(x)), name="mel_spectrogram")


def stateful_lstm() -> Any:
    keras = _keras()
    sequence = keras.Input((3, 1), batch_size=1, name="sequence")
    x = keras.layers.LSTM(2, return_sequences=True, stateful=True, name="lstm")(sequence)
    return keras.Model(sequence, x, name="stateful_lstm")


def multi_state_rnn() -> Any:
    """A step model: the sequence and the LSTM's and GRU's states in, the prediction and the new states out."""
    keras = _keras()
    x = keras.Input((3, 2), name="x")
    h, c, g = keras.Input((4,), name="lstm_h"), keras.Input((4,), name="lstm_c"), keras.Input((3,), name="gru_h")
    seq, h_out, c_out = keras.layers.LSTM(4, return_sequences=True, return_state=True, name="lstm")(
        x, initial_state=[h, c])
    last, g_out = keras.layers.GRU(3, return_state=True, name="gru")(seq, initial_state=[g])
    return keras.Model([x, h, c, g], [keras.layers.Dense(2, name="y")(last), h_out, c_out, g_out],
                       name="multi_state_rnn")


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


# Every preprocessing layer of keras.layers (Keras 3.15) in a one-layer model: constructor arguments, and the input
# it takes ("image": 32×32×3 pixels, "ids": int64 token ids, "values": floats, "audio": a waveform, "text": strings).
# Random augmentation layers compute the identity at inference (training=False), which is what is converted.
PREPROCESSING_LAYERS: dict[str, tuple[dict[str, Any], str]] = {
    "Rescaling": ({"scale": 1 / 255.0}, "image"),
    "Normalization": ({"mean": 120.0, "variance": 900.0}, "image"),
    "Resizing": ({"height": 16, "width": 16}, "image"),
    "CenterCrop": ({"height": 20, "width": 20}, "image"),
    "AutoContrast": ({"value_range": (0, 255)}, "image"),
    "Equalization": ({"value_range": (0, 255)}, "image"),
    "Solarization": ({"threshold_factor": 0.5, "value_range": (0, 255)}, "image"),
    "RandomFlip": ({}, "image"),
    "RandomRotation": ({"factor": 0.2}, "image"),
    "RandomZoom": ({"height_factor": 0.2}, "image"),
    "RandomTranslation": ({"height_factor": 0.1, "width_factor": 0.1}, "image"),
    "RandomCrop": ({"height": 20, "width": 20}, "image"),
    "RandomContrast": ({"factor": 0.2}, "image"),
    "RandomBrightness": ({"factor": 0.2}, "image"),
    "RandomGrayscale": ({}, "image"),
    "RandomHue": ({"factor": 0.2}, "image"),
    "RandomSaturation": ({"factor": 0.2}, "image"),
    "RandomSharpness": ({"factor": 0.2}, "image"),
    "RandomShear": ({"x_factor": 0.2}, "image"),
    "RandomPerspective": ({}, "image"),
    "RandomColorJitter": ({"brightness_factor": 0.2}, "image"),
    "RandomColorDegeneration": ({"factor": 0.2}, "image"),
    "RandomPosterization": ({"factor": (1, 8)}, "image"),
    "RandomInvert": ({}, "image"),
    "RandomElasticTransform": ({}, "image"),
    "RandomErasing": ({}, "image"),
    "RandomGaussianBlur": ({}, "image"),
    "AugMix": ({}, "image"),
    "RandAugment": ({}, "image"),
    "CutMix": ({}, "image"),
    "MixUp": ({}, "image"),
    "IntegerLookup": ({"vocabulary": [12, 7, 99, 3]}, "ids"),
    "CategoryEncoding": ({"num_tokens": 10, "output_mode": "multi_hot"}, "ids"),
    "Hashing": ({"num_bins": 8}, "ids"),
    "Discretization": ({"bin_boundaries": [-1.0, 0.0, 1.0]}, "values"),
    "MelSpectrogram": ({"sequence_stride": 64, "fft_length": 128, "num_mel_bins": 16}, "audio"),
    "STFTSpectrogram": ({"frame_length": 64, "frame_step": 32}, "audio_channels"),
    "StringLookup": ({"vocabulary": ["a", "b", "c"]}, "text"),
    "TextVectorization": ({"vocabulary": ["a", "b", "c"], "output_sequence_length": 4}, "text"),
    "HashedCrossing": ({"num_bins": 8}, "pair"),
}


def preprocessing_layer(class_name: str) -> Callable[[], Any]:
    """A model of one PREPROCESSING_LAYERS layer on its kind of input, then a small trainable layer."""
    def build() -> Any:
        keras = _keras()
        kwargs, kind = PREPROCESSING_LAYERS[class_name]
        layer = getattr(keras.layers, class_name)(name=class_name.lower(), **kwargs)
        if kind == "pair":
            inputs = [keras.Input((1,), dtype="int64", name="a"), keras.Input((1,), dtype="int64", name="b")]
            return keras.Model(inputs, layer(tuple(inputs)), name=f"layer_{class_name}")
        shapes = {"image": ((32, 32, 3), "float32"), "ids": ((5,), "int64"), "values": ((4,), "float32"),
                  "audio": ((1024,), "float32"), "audio_channels": ((1024, 1), "float32"), "text": ((1,), "string")}
        shape, dtype = shapes[kind]
        inputs = keras.Input(shape, dtype=dtype, name=kind)
        x = layer(inputs)
        if kind == "image":
            x = keras.layers.Conv2D(2, 3)(x)
        return keras.Model(inputs, x, name=f"layer_{class_name}")

    build.__name__ = f"layer_{class_name}"
    return build


# What the stage does with each preprocessing layer (measured: benchmarks/coverage.py --user-models); the rest convert.
PREPROCESSING_OUTCOMES: dict[str, str] = {
    **{name: f"refused: {name}" for name in ["TextVectorization", "StringLookup", "Hashing", "HashedCrossing"]},
    "RandomShear": "keras cannot load",  # Keras 3.15 cannot deserialize a saved model holding it
}

USER_MODELS_LIST = [
    UserModel("MobileNetV3Small_dynamic", mobilenet_v3("MobileNetV3Small"), "converts"),
    UserModel("MobileNetV3Large_dynamic", mobilenet_v3("MobileNetV3Large"), "converts", in_ci=False),
    UserModel("bilinear_upsampling", bilinear_upsampling, "converts"),
    UserModel("upsampling_modes", upsampling("upsampling_modes", ["nearest", "bilinear", "bicubic", "area"]),
              "converts"),
    UserModel("upsampling_lanczos", upsampling("upsampling_lanczos", ["bilinear", "lanczos3"]),
              "refused: UpSampling2D"),
    UserModel("upsampling_bicubic_3", upsampling("upsampling_bicubic_3", ["bicubic"], (3, 3)),
              "refused: UpSampling2D"),
    UserModel("resize_modes", resize_modes("resize_modes", ["nearest", "bilinear", "bicubic", "area", "lanczos3",
                                                            "lanczos5"]), "converts"),
    UserModel("conv1d_dynamic_length", conv1d_dynamic_length, "converts"),
    UserModel("mel_spectrogram", mel_spectrogram, "converts"),
    UserModel("stateful_lstm", stateful_lstm, "refused: LSTM"),
    UserModel("multi_state_rnn", multi_state_rnn, "converts"),
    UserModel("text_vectorization", text_vectorization, "refused: TextVectorization"),
    UserModel("integer_lookup", integer_lookup, "converts"),
    UserModel("discretization_one_hot", discretization_one_hot, "converts"),
    UserModel("category_encodings", category_encodings, "converts"),
    UserModel("resize_antialias_17", resizing("resize_antialias_17", 24, 24, (64, 64), antialias=True),
              "refused: Resizing"),
    UserModel("resize_antialias_18", resizing("resize_antialias_18", 24, 24, (64, 64), antialias=True),
              "converts", opset=18),
    UserModel("resize_area", resizing("resize_area", 20, 25, (30, 40), interpolation="area"), "converts"),
    UserModel("resize_area_integer", resizing("resize_area_integer", 10, 10, (30, 40), interpolation="area"),
              "converts"),
    *(UserModel(f"layer_{name}", preprocessing_layer(name), PREPROCESSING_OUTCOMES.get(name, "converts"), in_ci=False)
      for name in PREPROCESSING_LAYERS),
]

USER_MODELS: dict[str, UserModel] = {model.name: model for model in USER_MODELS_LIST}
