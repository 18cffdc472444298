import numpy as np

from onnx_stage.divergence import KerasLayerOutput, locate_divergence

rng = np.random.default_rng(0)
A, B, C, D = (rng.standard_normal((1, 4, 4, 3)) for _ in range(4))


def layer(name: str, output: np.ndarray, *parents: str) -> KerasLayerOutput:
    return KerasLayerOutput(name=name, kind="Layer", output=output, parents=list(parents))


def test_chain_blames_the_first_layer_without_counterpart() -> None:
    layers = [layer("a", A), layer("b", B, "a"), layer("c", C, "b")]
    onnx_values = [A.transpose(0, 3, 1, 2), B + 1, C + 1]  # a agrees in NCHW layout; b diverges
    divergence = locate_divergence(layers, onnx_values, atol=1e-5, rtol=1e-5)
    assert divergence.layer == "b" and divergence.last_agreeing == "a"


def test_a_fused_layer_with_agreeing_descendant_is_not_blamed() -> None:
    layers = [layer("conv", A), layer("bn", B, "conv"), layer("relu", C, "bn"), layer("head", D, "relu")]
    onnx_values = [B, C, D + 1]  # conv was folded into bn: no tensor of its own
    divergence = locate_divergence(layers, onnx_values, atol=1e-5, rtol=1e-5)
    assert divergence.layer == "head" and divergence.last_agreeing == "relu"


def test_a_divergence_in_one_branch_is_found_and_everything_agreeing_blames_nothing() -> None:
    layers = [layer("stem", A), layer("left", B, "stem"), layer("right", C, "stem"), layer("merge", D, "left", "right")]
    assert locate_divergence(layers, [A, B, C, D], atol=1e-5, rtol=1e-5) is None
    divergence = locate_divergence(layers, [A, B, C * 2, D * 2], atol=1e-5, rtol=1e-5)
    assert divergence.layer == "right" and divergence.last_agreeing == "stem"
