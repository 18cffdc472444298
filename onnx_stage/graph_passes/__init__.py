"""The graph rewrite steps, one module each, registered in PASSES (name → function): exact rewrites of the converted
model in standard ONNX ops. Adding a step: write a module with a function that rewrites an onnx.ModelProto in place
and returns how many rewrites it made, and list it here; the gate (onnx_stage/graph_optimize.py) keeps it only where
it proves itself.

The steps (`convert.graph_optimizations`, in order):
- `neutral_elementwise`: drops `x + 0`, `x - 0`, `x * 1`, `x / 1` with constant zeros/ones that do not broadcast `x`
  to a bigger shape (the lean route attaches weights after conversion, so a zero bias stays an Add that plain
  tf2onnx's frozen graph folds away), and Identity nodes (input naming, output naming).
- `shape_simplification`: a Reshape whose target shape is computed at run time (Shape → Gather → Concat) gets it
  as a constant where ONNX shape inference knows every dimension but one (that one becomes -1); a Transpose that
  only moves dimensions of size 1 becomes a Reshape; Reshape → Reshape collapses; a Reshape to the shape its input
  already has disappears; a Transpose followed by elementwise ops and a reduction that drops the moved axes goes
  (sink_transposes_into_reductions); nodes nothing uses any more are removed.
- `layer_norm_fusion`: TensorFlow's layer normalisation as tf2onnx writes it (moments: mean, squared difference,
  variance, Rsqrt as Sqrt + Reciprocal, scale and shift) over the last axis becomes one ONNX LayerNormalization
  (opset 17 or later: a standard op, with kernels on onnxruntime's CPU and CUDA providers).
- `loop_simplification`: tf2onnx's while loops of recurrent layers it does not fuse (Keras 3 GRU, SimpleRNN): the
  weights it carries through every iteration read from outside the loop instead, body nodes that read only
  constants hoisted in front of it, the input projection done for all steps at once before it, and a loop
  condition that cannot end the loop before its constant trip count no longer computed every step.
- `recurrent_fusion`: such a loop whose body is exactly a Keras 3 GRU cell (reset_after) or SimpleRNN cell, run over
  every step of its input from a zero counter, becomes one ONNX GRU (linear_before_reset=1) or RNN node.
- `global_pooling`: a ReduceMean over every axis after the first two becomes GlobalAveragePool (its own kernel,
  also in onnxruntime's blocked NCHWc layout).

Nothing here writes onnxruntime's own fused ops (FusedConv, NCHWc, ...): those exist for one execution provider and
would break the twin's CUDA-then-CPU provider list.
"""
from __future__ import annotations

from collections.abc import Callable

import onnx

from onnx_stage.graph_passes.global_pooling import use_global_pooling
from onnx_stage.graph_passes.layer_norm_fusion import fuse_layer_norm
from onnx_stage.graph_passes.loop_simplification import simplify_loops
from onnx_stage.graph_passes.neutral_elementwise import remove_neutral_elementwise
from onnx_stage.graph_passes.recurrent_fusion import fuse_recurrent_loops
from onnx_stage.graph_passes.shape_simplification import simplify_shapes

GraphPass = Callable[[onnx.ModelProto], int]  # rewrites the model in place, returns how many rewrites it made

PASSES: dict[str, GraphPass] = {
    "neutral_elementwise": remove_neutral_elementwise,
    "shape_simplification": simplify_shapes,
    "layer_norm_fusion": fuse_layer_norm,
    "loop_simplification": simplify_loops,
    "recurrent_fusion": fuse_recurrent_loops,
    "global_pooling": use_global_pooling,
}
