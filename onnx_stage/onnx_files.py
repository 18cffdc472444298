"""ONNX files: self-contained below protobuf's 2 GB limit, weights in a `<name>.data` side file above it.

A ModelProto cannot be serialised past 2 GiB, so a model whose tensors come near that size is saved with ONNX
external data (all tensors in one file next to the model); every reader here works from the path, never from
serialised bytes, so such models go through the whole stage. Below the limit the file is written one tensor at a
time, so saving never holds a second copy of all the weights (only of the tensor being written).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from google.protobuf.message import Message
from onnx import external_data_helper, helper

PROTOBUF_LIMIT_BYTES = 2**31
GRAPH_HEADROOM_BYTES = 64 * 2**20  # the graph itself (nodes, names, small constants) must fit next to the tensors
GRAPH_FIELD = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
INITIALIZER_FIELD = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
RAW_DATA_FIELD = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number


def graph_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """The graph's inputs a caller feeds: initializers listed as inputs too (older IR versions) are weights."""
    weights = {tensor.name for tensor in graph.initializer}
    return [value for value in graph.input if value.name not in weights]


def tensor_bytes(proto: onnx.ModelProto) -> int:
    """Size of the initializers, from their dims (ByteSize would encode each tensor: a copy of every weight)."""
    return sum(math.prod(tensor.dims) * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
               if tensor.data_type != onnx.TensorProto.STRING else tensor.ByteSize()
               for tensor in proto.graph.initializer)


def needs_external_data(proto: onnx.ModelProto) -> bool:
    return tensor_bytes(proto) > PROTOBUF_LIMIT_BYTES - GRAPH_HEADROOM_BYTES


def data_file_of(onnx_path: Path) -> Path:
    return onnx_path.with_name(onnx_path.name + ".data")


def save_onnx(proto: onnx.ModelProto, onnx_path: Path, external: bool | None = None) -> None:
    """Save inline, or (external=True, or None and too big to inline) with the tensors in `<name>.data`."""
    if external if external is not None else needs_external_data(proto):
        onnx.save_model(proto, str(onnx_path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_file_of(onnx_path).name, size_threshold=1024)
    else:
        with onnx_path.open("wb") as stream:
            _write_streamed(proto, stream)


def append_external_tensor(tensor: onnx.TensorProto, array: np.ndarray, data: BinaryIO, location: str) -> None:
    """Write `array` to the open data file and point `tensor` (name set by the caller) at it."""
    array = np.ascontiguousarray(array)
    tensor.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
    tensor.dims.extend(array.shape)
    offset = data.tell()
    array.tofile(data)
    tensor.raw_data = b""  # set_external_data insists on the field; the bytes are in the file
    external_data_helper.set_external_data(tensor, location=location, offset=offset, length=array.nbytes)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL


def _write_streamed(model: onnx.ModelProto, stream: BinaryIO) -> None:
    """The model's protobuf encoding with each initializer's bytes copied once, straight to the file (protobuf
    parsers accept fields in any order, so the graph goes last and its initializers after its other fields)."""
    graph_rest = _without(model.graph, "initializer").SerializeToString()
    tensors = [(_without(tensor, "raw_data").SerializeToString(), len(tensor.raw_data))
               for tensor in model.graph.initializer]
    sizes = [len(meta) + (_field_size(RAW_DATA_FIELD, raw) if raw else 0) for meta, raw in tensors]
    graph_size = len(graph_rest) + sum(_field_size(INITIALIZER_FIELD, size) for size in sizes)
    stream.write(_without(model, "graph").SerializeToString())
    stream.write(_key(GRAPH_FIELD) + _varint(graph_size) + graph_rest)
    for tensor, (meta, raw), size in zip(model.graph.initializer, tensors, sizes):
        stream.write(_key(INITIALIZER_FIELD) + _varint(size) + meta)
        if raw:
            stream.write(_key(RAW_DATA_FIELD) + _varint(raw))
            stream.write(tensor.raw_data)


def _field_size(field_number: int, length: int) -> int:
    return len(_key(field_number)) + len(_varint(length)) + length


def _without(message: Message, skipped: str) -> Message:
    copy = type(message)()
    for field, value in message.ListFields():
        if field.name == skipped:
            continue
        if field.is_repeated:
            getattr(copy, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(copy, field.name).CopyFrom(value)
        else:
            setattr(copy, field.name, value)
    return copy


def _key(field_number: int) -> bytes:
    return _varint(field_number << 3 | 2)  # wire type 2: length-delimited


def _varint(value: int) -> bytes:
    encoded = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        encoded.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(encoded)
