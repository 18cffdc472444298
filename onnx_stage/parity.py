"""Pure comparison of two sets of model outputs, and the generated inputs they are computed on."""
from __future__ import annotations

import numpy as np

from tasks.records import OutputParity, TensorSpec


def compare_output(name: str, expected: np.ndarray, actual: np.ndarray, atol: float, rtol: float) -> OutputParity:
    if expected.shape != actual.shape:
        raise ValueError(f"output {name!r}: Keras shape {expected.shape} but ONNX shape {actual.shape}")
    expected64, actual64 = expected.astype(np.float64), actual.astype(np.float64)
    difference = np.abs(actual64 - expected64)
    relative = difference / np.maximum(np.abs(expected64), np.finfo(np.float32).tiny)
    out_of_tolerance = difference > atol + rtol * np.abs(expected64)
    is_classifier = expected.ndim == 2 and expected.shape[1] > 1
    return OutputParity(
        output=name, atol=atol, rtol=rtol,
        max_abs=float(difference.max(initial=0.0)),
        max_rel=float(relative.max(initial=0.0)),
        mean_abs=float(difference.mean()) if difference.size else 0.0,
        cosine_similarity=_cosine(expected64.ravel(), actual64.ravel()),
        fraction_out_of_tolerance=float(out_of_tolerance.mean()) if difference.size else 0.0,
        within_tolerance=not bool(out_of_tolerance.any()),
        argmax_agreement=float(np.mean(expected.argmax(1) == actual.argmax(1))) if is_classifier else None,
        top5_overlap=_top_k_overlap(expected, actual, 5) if is_classifier and expected.shape[1] > 5 else None,
    )


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norms) if norms else float(np.array_equal(a, b))


def _top_k_overlap(expected: np.ndarray, actual: np.ndarray, k: int) -> float:
    top_expected = np.argsort(-expected, axis=1)[:, :k]
    top_actual = np.argsort(-actual, axis=1)[:, :k]
    return float(np.mean([len(set(e) & set(a)) / k for e, a in zip(top_expected, top_actual)]))


def output_passes(parity: OutputParity, min_argmax_agreement: float) -> bool:
    argmax_ok = parity.argmax_agreement is None or parity.argmax_agreement >= min_argmax_agreement
    return parity.within_tolerance and argmax_ok


def generated_inputs(specs: list[TensorSpec], batch_size: int, rng: np.random.Generator,
                     example: list[np.ndarray] | None, hints: list[dict] | None = None,
                     sequence_length: int | None = None) -> list[np.ndarray]:
    """Random inputs of each spec's dtype and a plausible range: integer inputs within the range the model's
    first layers imply (an Embedding's vocabulary), floats within the example's range, else the implied range
    (Rescaling, Normalization), else standard normal. Dynamic inner dimensions take sequence_length, else the
    example's size, else 8."""
    arrays = []
    for index, spec in enumerate(specs):
        sample = example[index] if example else None
        hint = hints[index] if hints else {}
        inner = [d if d is not None else sequence_length or (sample.shape[i + 1] if sample is not None else 8)
                 for i, d in enumerate(spec.shape[1:])]
        shape = (batch_size, *inner)
        if np.issubdtype(np.dtype(spec.dtype), np.integer):
            low, high = (hint["low"], hint["high"]) if hint else (0, int(sample.max()) if sample is not None else 9)
            arrays.append(rng.integers(int(low), int(high), size=shape, endpoint=True).astype(spec.dtype))
        elif sample is not None and sample.size:
            arrays.append(rng.uniform(float(sample.min()), float(sample.max()), size=shape).astype(spec.dtype))
        elif hint:
            arrays.append(rng.uniform(hint["low"], hint["high"], size=shape).astype(spec.dtype))
        else:
            arrays.append(rng.standard_normal(shape).astype(spec.dtype))
    return arrays


def has_dynamic_inner_dimension(specs: list[TensorSpec]) -> bool:
    return any(d is None for spec in specs for d in spec.shape[1:])
