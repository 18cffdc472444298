"""Smaller/faster variants of a converted model: fp16 weights, or dynamic int8 quantisation.

A variant is only registered when it passes its own parity gate against Keras (see tasks/validate.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.transformers.float16 import convert_float_to_float16
from onnxruntime.transformers.onnx_model import OnnxModel

VariantKind = Literal["fp16", "int8_dynamic"]


def build_variant(kind: VariantKind, onnx_path: Path, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    variant_path = out_dir / "model.onnx"
    if kind == "fp16":
        # float32 inputs/outputs keep the signature consumers already use
        converted = OnnxModel(convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True))
        converted.topological_sort()  # the converter appends its input Casts after the nodes that read them
        onnx.save(converted.model, str(variant_path))
    else:
        # only matrix products: dynamic quantisation turns convolutions into ConvInteger, which is 2-10x slower than
        # fp32 on this kind of CPU (no VNNI; benchmarks/int8_speedup.py)
        quantize_dynamic(onnx_path, variant_path, weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gemm"])
    return variant_path
