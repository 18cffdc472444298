"""Static int8 quantisation (QDQ) of a converted model, calibrated on inputs shaped like the model's real ones.

Recipe (benchmarks/int8_speedup.py measures it): onnxruntime's quant_pre_process (ONNX shape inference + basic
graph optimisation), then quantize_static in QDQ format with per-channel weights and uint8 activations, MinMax
calibration. onnxruntime fuses the QuantizeLinear/DequantizeLinear pairs into QLinearConv/QLinearMatMul.
On an x86 CPU without VNNI (AVX2 only, like this AMD EPYC Zen 3) MLAS's int8 GEMMs are its U8S8 kernels
(uint8 activations × int8 weights; int8 activations are converted to uint8 on x86 anyway). Their vpmaddubsw adds
pairs of products in int16 and saturates: on a small trained convnet full-range int8 weights gave a logit cosine of
0.966 to fp32, 7-bit weights (reduce_range) 0.9997. Measured at batch 1 in one run (ResNet50 128×128, EfficientNetB0
64×64, MobileNetV2 224×224), reduce_range ran as fast as full-range U8S8 (same kernel) and U8U8 was slower.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from onnx_stage.config import ValidateConfig
from onnx_stage.inputs import read_sample_data, validation_inputs
from onnx_stage.keras_worker import KerasWorker
from onnx_stage.records import SourceModel


class _OneBatchCalibration(CalibrationDataReader):
    """All calibration rows in one feed: MinMax keeps every intermediate output of every feed until it computes the
    ranges anyway, so smaller feeds would only cost more runs."""

    def __init__(self, feed: dict[str, np.ndarray]) -> None:
        self._feeds = iter([feed])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_static_qdq(onnx_path: Path, out_dir: Path, calibration: list[np.ndarray]) -> Path:
    """The int8_static variant of onnx_path, calibrated on `calibration` (one array per model input)."""
    prepared, quantized = out_dir / "prepared.onnx", out_dir / "model.onnx"
    # the symbolic shape pass is for transformer graphs and fails on some Keras exports; ONNX shape inference suffices
    quant_pre_process(onnx_path, prepared, skip_symbolic_shape=True)
    graph = onnx.load(str(prepared)).graph
    # a quantized Softmax has a fixed output scale of 1/256: small probabilities (a flat 1000-class output is
    # ~1/1000 each) all round to 0, so Softmax stays float
    softmax_nodes = [node.name for node in graph.node if node.op_type == "Softmax"]
    initializers = {initializer.name for initializer in graph.initializer}
    input_names = [i.name for i in graph.input if i.name not in initializers]
    quantize_static(prepared, quantized, _OneBatchCalibration(dict(zip(input_names, calibration))),
                    quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=softmax_nodes)
    prepared.unlink()
    return quantized


def calibration_inputs(source: SourceModel, worker: KerasWorker, config: ValidateConfig, rows: int) -> list[np.ndarray]:
    """What int8_static calibrates its activation ranges on: the user's validation.sample_data when configured
    (the real input distribution), else generated rows made as validation makes them (input hints, the
    example's range) but from another seed, so the gate is not judged on the rows the ranges were fitted to."""
    if config.sample_data:
        return read_sample_data(config.sample_data, source, rows)
    generated = config.model_copy(update={"seed": config.seed + 1, "batch_sizes": [rows], "sequence_lengths": []})
    return dict(validation_inputs(source, worker, generated))[f"generated batch {rows}"]
