"""TensorFlow ops tf2onnx 1.17 has no handler for, added to its global handler table.

Every route goes through tf2onnx (onnxmltools and Keras' exporter delegate to it), so registering here,
on import of onnx_stage.routes, fixes all of them.
"""
import numpy as np
from tf2onnx import utils
from tf2onnx.handler import tf_op


@tf_op("Erfc")
class Erfc:
    """erfc(x) = 1 - erf(x); Keras' exact gelu uses Erfc, which ONNX lacks (tf2onnx emits it verbatim)."""

    @classmethod
    def version_9(cls, ctx, node, **kwargs) -> None:  # noqa: ANN001, ANN003
        node.type = "Erf"
        one = ctx.make_const(utils.make_name("one"),
                             np.array(1, dtype=utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))))
        erf_output = node.output[0]
        ctx.insert_new_node_on_output("Sub", erf_output, inputs=[one.output[0], erf_output],
                                      name=utils.make_name(node.name))
