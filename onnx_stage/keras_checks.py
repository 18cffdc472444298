"""Refusals of a loaded Keras model that no conversion can help: weights that are not finite numbers, inputs that
take strings. Run in the Keras child right after loading, before anything is converted."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def refuse_unconvertible(weights: Sequence[Any], inputs: Sequence[Any]) -> None:
    """Raise ValueError (one line: the layer or input, and the fix) if a weight holds NaN/±inf or an input takes
    strings. `weights`: Keras variables (`.path` like "dense_3/kernel"); `inputs`: ports with `.name`/`.dtype`."""
    refuse_non_finite_weights(weights)
    refuse_string_inputs(inputs)


def refuse_non_finite_weights(weights: Sequence[Any]) -> None:
    """The first layer (in the model's weight order) with a NaN or ±inf weight, named with its counts and the fix."""
    for weight in weights:
        values = np.asarray(weight.numpy() if hasattr(weight, "numpy") else weight)
        if not np.issubdtype(values.dtype, np.floating) or np.isfinite(values).all():
            continue
        path = str(getattr(weight, "path", getattr(weight, "name", "weight")))
        layer, _, variable = path.rpartition("/")
        kinds = [label for label, count in (("NaN", np.isnan(values).sum()), ("+inf", np.isposinf(values).sum()),
                                            ("-inf", np.isneginf(values).sum())) if count]
        bad = int((~np.isfinite(values)).sum())
        raise ValueError(
            f"layer {layer or path} has {' and '.join(kinds)} weights ({variable or path}: {bad} of {values.size} "
            "values), so nothing it computes can be trusted and nothing was converted: fix the training run that "
            "produced them (or take an earlier checkpoint), re-save the model and register it again")


def refuse_string_inputs(inputs: Sequence[Any]) -> None:
    """Inputs of dtype string (a model that starts with TextVectorization or StringLookup)."""
    for port in inputs:
        if str(port.dtype) in {"string", "str", "object"}:
            raise ValueError(
                f"input {port.name!r} takes strings, which this stage cannot feed to onnxruntime: split the text "
                "preprocessing (TextVectorization/StringLookup) off the model, register the model that takes its "
                "token ids (int64) and convert that one")
