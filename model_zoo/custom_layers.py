"""Custom Keras objects of the zoo (model_zoo.zoo): a registered layer and a subclassed model.

A .keras file holding them only loads where this module was imported first: list it in
convert.custom_object_modules so the Keras child imports it before loading.
"""
import keras


@keras.saving.register_keras_serializable(package="onnx_stage_zoo")
class ScaledSwish(keras.layers.Layer):
    def __init__(self, scale: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.scale = scale

    def call(self, inputs):  # noqa: ANN001, ANN201
        return self.scale * inputs * keras.ops.sigmoid(inputs)

    def get_config(self) -> dict:
        return {**super().get_config(), "scale": self.scale}


@keras.saving.register_keras_serializable(package="onnx_stage_zoo")
class TinyResidualClassifier(keras.Model):
    def __init__(self, hidden: int = 16, classes: int = 3, **kwargs) -> None:
        super().__init__(**kwargs)
        self.hidden, self.classes = hidden, classes
        self.project = keras.layers.Dense(hidden, activation="relu")
        self.residual = keras.layers.Dense(hidden)
        self.head = keras.layers.Dense(classes, activation="softmax")

    def call(self, inputs):  # noqa: ANN001, ANN201
        x = self.project(inputs)
        return self.head(keras.ops.relu(x + self.residual(x)))

    def get_config(self) -> dict:
        return {**super().get_config(), "hidden": self.hidden, "classes": self.classes}
