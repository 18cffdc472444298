"""The ONNX twin's `python_function` loader, carried inside every registered twin (MLflow `code_paths`).

A registry consumer switches `models:/<name>@<alias>` to `models:/<name>-onnx@<alias>` and changes nothing else:
this loader answers every request the source version's pyfunc answers, with the same Python type and shape.
MLflow's own onnx pyfunc does not (it returns a dict for a single output and flattens outputs for a DataFrame), so
the twin declares this module as its loader and keeps the `onnx` flavor beside it for readers of `model.onnx`.

It needs only numpy, pandas, mlflow and onnxruntime: never this project, TensorFlow or the source's framework.
The session comes from MLflow's onnx flavor code, so the registered execution providers (CUDA first where
onnxruntime has it, then CPU) and session options apply exactly as for `mlflow.onnx`.

How each source flavor's pyfunc answers (`answer` in the flavor's config), mirrored here:
- `keras` (mlflow.keras): `keras.ops.convert_to_numpy(model.predict(x))`: one output → its array; several →
  `np.array` of the list (stacked when the shapes agree); a DataFrame request → `pd.DataFrame(…, index=…)`.
- `tensorflow_keras` (mlflow.tensorflow of a Keras model): `model.predict(x)` as is (a list for several outputs);
  a DataFrame request → `pd.DataFrame(…, index=…)`.
- `tensorflow_module` (mlflow.tensorflow of a tf.Module): one output → its array; several → a dict by output name
  (the module's own outputs are TensorFlow tensors: the twin answers with the numpy arrays they hold).
- `tensorflow_signature` (mlflow.tensorflow of a TF1 estimator SavedModel): a dict (dict request) or DataFrame of
  the outputs by name, each raveled when every row holds one value, else as lists.
- `tabular` (scikit-learn, LightGBM, XGBoost): the one ONNX output the source's `predict` corresponds to
  (`output`), as is, raveled, or its last column (`transform`: a raw binary booster predicts P(class 1)).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

_NUMPY_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
                 "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16,
                 "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
                 "tensor(string)": np.object_}


def _load_pyfunc(path: str, model_config: dict[str, Any] | None = None) -> "OnnxTwin":
    from mlflow.onnx import _OnnxModelWrapper  # reads providers and session options from the onnx flavor

    return OnnxTwin(_OnnxModelWrapper(path).rt, model_config or {})


class OnnxTwin:
    def __init__(self, session: Any, config: dict[str, Any]) -> None:
        self.session = session
        self.inputs = [(i.name, _NUMPY_DTYPES.get(i.type, np.float32)) for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]
        self.answer = config.get("answer", "keras")
        self.config = config

    def get_raw_model(self) -> Any:
        """The onnxruntime InferenceSession, as mlflow.pyfunc's `get_raw_model()` returns it."""
        return self.session

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        outputs = self.session.run(None, self._feed(data))
        return _ANSWERS[self.answer](self, data, outputs)

    def _feed(self, data: Any) -> dict[str, np.ndarray]:
        names = [name for name, _ in self.inputs]
        if isinstance(data, dict):
            missing = [name for name in names if name not in data]
            if missing:
                raise ValueError(f"the request has no input {', '.join(map(repr, missing))}; this model's inputs: "
                                 f"{', '.join(names)}")
            arrays = [data[name] for name in names]
        elif isinstance(data, pd.DataFrame):
            arrays = [data.to_numpy()] if len(names) == 1 else [_column(data, name) for name in names]
        elif isinstance(data, (list, tuple)) and len(names) > 1:
            arrays = list(data)
        else:
            arrays = [data]
        if len(arrays) != len(names):
            raise ValueError(f"this model takes {len(names)} inputs ({', '.join(names)}), the request has {len(arrays)}")
        return {name: np.asarray(array, dtype=dtype) for (name, dtype), array in zip(self.inputs, arrays)}

    def _keras(self, data: Any, outputs: list[np.ndarray]) -> Any:
        result = outputs[0] if len(outputs) == 1 else list(outputs)
        return pd.DataFrame(result, index=data.index) if isinstance(data, pd.DataFrame) else np.array(result)

    def _tensorflow_keras(self, data: Any, outputs: list[np.ndarray]) -> Any:
        result = outputs[0] if len(outputs) == 1 else list(outputs)
        return pd.DataFrame(result, index=data.index) if isinstance(data, pd.DataFrame) else result

    def _tensorflow_module(self, data: Any, outputs: list[np.ndarray]) -> Any:
        return outputs[0] if len(outputs) == 1 else dict(zip(self.output_names, outputs))

    def _tensorflow_signature(self, data: Any, outputs: list[np.ndarray]) -> Any:
        answer = {name: value.ravel() if value.ndim != 1 and all(len(row) == 1 for row in value) else value.tolist()
                  for name, value in zip(self.output_names, outputs)}
        return answer if isinstance(data, dict) else pd.DataFrame.from_dict(data=answer)

    def _tabular(self, data: Any, outputs: list[np.ndarray]) -> np.ndarray:
        value = outputs[self.output_names.index(self.config["output"])]
        transform = self.config.get("transform", "identity")
        return value.ravel() if transform == "ravel" else value[:, -1] if transform == "last_column" else value


def _column(frame: pd.DataFrame, name: str) -> np.ndarray:
    if name not in frame.columns:
        raise ValueError(f"the DataFrame has no column {name!r} (one column per input: {', '.join(frame.columns)})")
    return np.stack([np.asarray(cell) for cell in frame[name]])


_ANSWERS = {"keras": OnnxTwin._keras, "tensorflow_keras": OnnxTwin._tensorflow_keras,
            "tensorflow_module": OnnxTwin._tensorflow_module, "tensorflow_signature": OnnxTwin._tensorflow_signature,
            "tabular": OnnxTwin._tabular}
