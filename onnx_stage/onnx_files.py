"""ONNX files: self-contained below protobuf's 2 GB limit, weights in a `<name>.data` side file above it.

A ModelProto cannot be serialised past 2 GiB, so a model whose tensors come near that size is saved with ONNX
external data (all tensors in one file next to the model); every reader here works from the path, never from
serialised bytes, so such models go through the whole stage.
"""
from __future__ import annotations

from pathlib import Path

import onnx

PROTOBUF_LIMIT_BYTES = 2**31
GRAPH_HEADROOM_BYTES = 64 * 2**20  # the graph itself (nodes, names, small constants) must fit next to the tensors


def tensor_bytes(proto: onnx.ModelProto) -> int:
    return sum(tensor.ByteSize() for tensor in proto.graph.initializer)


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
        onnx.save_model(proto, str(onnx_path))

