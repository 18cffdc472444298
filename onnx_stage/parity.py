"""Pure comparison of two sets of model outputs, and the generated inputs they are computed on.

One rule for every comparison of the stage (validation, variant gates, served options, the consumer check): a value
passes only if both sides are finite and |actual - expected| <= atol + rtol * |expected|; NaN or ±inf on either side
fails, even where both sides agree on it (out_of_tolerance_mask, close_enough). The figures say so too: max abs/rel
error and cosine are NaN, rows holding NaN/inf disagree on argmax, and each side's non-finite values are counted."""
from __future__ import annotations

import numpy as np

from onnx_stage.records import OutputParity, TensorSpec


def compare_output(name: str, expected: np.ndarray, actual: np.ndarray, atol: float, rtol: float) -> OutputParity:
    """Parity figures of one output by the one rule (module docstring). Raises ValueError if the shapes differ."""
    if expected.shape != actual.shape:
        raise ValueError(f"output {name!r}: Keras shape {expected.shape} but ONNX shape {actual.shape}")
    expected64, actual64 = expected.astype(np.float64), actual.astype(np.float64)
    finite = np.isfinite(expected64) & np.isfinite(actual64)
    with np.errstate(invalid="ignore", over="ignore"):
        difference = np.abs(actual64 - expected64)
        relative = difference / np.maximum(np.abs(expected64), np.finfo(np.float32).tiny)
    out_of_tolerance = out_of_tolerance_mask(expected64, actual64, atol, rtol)
    is_classifier = expected.ndim == 2 and expected.shape[1] > 1
    return OutputParity(
        output=name, atol=atol, rtol=rtol,
        max_abs=_largest(difference, finite),
        max_rel=_largest(relative, finite),
        mean_abs=float(difference.mean()) if difference.size else 0.0,
        cosine_similarity=_cosine(expected64.ravel(), actual64.ravel()) if finite.all() else float("nan"),
        fraction_out_of_tolerance=float(out_of_tolerance.mean()) if difference.size else 0.0,
        within_tolerance=not bool(out_of_tolerance.any()),
        argmax_agreement=float(np.mean((expected.argmax(1) == actual.argmax(1)) & finite.all(axis=1)))
        if is_classifier else None,
        top5_overlap=_top_k_overlap(expected, actual, 5) if is_classifier and expected.shape[1] > 5 else None,
        non_finite_source=int((~np.isfinite(expected64)).sum()),
        non_finite_onnx=int((~np.isfinite(actual64)).sum()),
    )


def _largest(values: np.ndarray, finite: np.ndarray) -> float:
    """The largest error; NaN when either side holds NaN/±inf, so no figure looks fine next to a non-finite value."""
    return float(values.max(initial=0.0)) if finite.all() else float("nan")


def cosine_at_least(parity: OutputParity, floor: float) -> bool:
    """Whether the output's cosine similarity reaches `floor`; a NaN cosine (non-finite outputs) never does."""
    return bool(parity.cosine_similarity >= floor)


def out_of_tolerance_mask(expected: np.ndarray, actual: np.ndarray, atol: float, rtol: float) -> np.ndarray:
    """The one parity rule, elementwise: |actual − expected| ≤ atol + rtol·|expected| (numpy.isclose's rule), and a
    NaN or ±inf on either side is always out of tolerance, even where both sides agree on it."""
    expected64, actual64 = np.asarray(expected, np.float64), np.asarray(actual, np.float64)
    finite = np.isfinite(expected64) & np.isfinite(actual64)
    with np.errstate(invalid="ignore"):
        return ~finite | (np.abs(actual64 - expected64) > atol + rtol * np.abs(expected64))


def close_enough(expected: np.ndarray, actual: np.ndarray, atol: float, rtol: float) -> bool:
    """Whether every element passes the parity rule (out_of_tolerance_mask); arrays of another shape never do."""
    return np.shape(expected) == np.shape(actual) and not out_of_tolerance_mask(expected, actual, atol, rtol).any()


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norms) if norms else float(np.array_equal(a, b))


def _top_k_overlap(expected: np.ndarray, actual: np.ndarray, k: int) -> float:
    top_expected = np.argsort(-expected, axis=1)[:, :k]
    top_actual = np.argsort(-actual, axis=1)[:, :k]
    return float(np.mean([len(set(e) & set(a)) / k for e, a in zip(top_expected, top_actual)]))


def output_passes(parity: OutputParity, min_argmax_agreement: float) -> bool:
    argmax_ok = parity.argmax_agreement is None or parity.argmax_agreement >= min_argmax_agreement
    finite = not (parity.non_finite_source or parity.non_finite_onnx)
    return parity.within_tolerance and argmax_ok and finite


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
