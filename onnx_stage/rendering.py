"""Human-readable renderings of an ONNX model: JSON (json.load-able ModelProto) and protobuf text."""
from __future__ import annotations

import math
from pathlib import Path

import onnx
from google.protobuf import json_format

ABBREVIATION_KEY = "onnx_stage.abbreviated_tensors"


def abbreviated(model: onnx.ModelProto, max_tensor_elements: int) -> onnx.ModelProto:
    """A copy whose initializers above max_tensor_elements keep name, type and dims but no values."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    names = []
    for tensor in copy.graph.initializer:
        elements = math.prod(tensor.dims)
        if elements > max_tensor_elements:
            data_type = tensor.data_type
            dims, name = list(tensor.dims), tensor.name
            tensor.Clear()
            tensor.name, tensor.data_type = name, data_type
            tensor.dims.extend(dims)
            tensor.doc_string = f"abbreviated: {elements} elements; the values are in model.onnx"
            names.append(name)
    if names:
        entry = copy.metadata_props.add()
        entry.key = ABBREVIATION_KEY
        entry.value = (f"{len(names)} tensors with more than {max_tensor_elements} elements are shown without "
                       f"values (full model: model.onnx): {', '.join(names)}")
    return copy


def write_renderings(model: onnx.ModelProto, json_path: Path, text_path: Path, max_tensor_elements: int) -> None:
    shown = abbreviated(model, max_tensor_elements)
    json_path.write_text(json_format.MessageToJson(shown, indent=1))
    text_path.write_text(str(shown))
