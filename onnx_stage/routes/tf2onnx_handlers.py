"""TensorFlow ops tf2onnx 1.17 has no handler for, added to its global handler table.

Every Keras route goes through tf2onnx (onnxmltools and Keras' exporter delegate to it), so registering here, on
import of this module (the Keras child's convert and the SavedModel route import it), fixes all of them.
"""
import numpy as np
from onnx import TensorProto
from tf2onnx import constants, utils
from tf2onnx.graph_builder import GraphBuilder
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


@tf_op("Bucketize")
class Bucketize:
    """Discretization's bucket index: the number of boundaries ≤ x (TensorFlow's bucketize_op.cc: upper_bound over the
    float boundaries, the input cast to float), as GreaterOrEqual against the constant boundaries, summed."""

    @classmethod
    def version_13(cls, ctx, node, **kwargs) -> None:  # noqa: ANN001, ANN003
        boundaries = np.array(node.get_attr_value("boundaries"), dtype=np.float32)
        values = node.input[0]
        if ctx.get_dtype(values) not in (TensorProto.FLOAT, TensorProto.DOUBLE):
            values = ctx.make_node("Cast", [values], attr={"to": TensorProto.FLOAT}).output[0]
        float_type = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
        bounds = ctx.make_const(utils.make_name("boundaries"), boundaries.astype(
            float_type if float_type in (np.float32, np.float64) else np.float32))
        column = GraphBuilder(ctx).make_unsqueeze({"data": values, "axes": [-1]})
        at_or_above = ctx.make_node("GreaterOrEqual", [column, bounds.output[0]])
        counted = ctx.make_node("Cast", [at_or_above.output[0]], attr={"to": TensorProto.INT32})
        total = GraphBuilder(ctx).make_reduce_sum({"data": counted.output[0], "axes": [-1], "keepdims": 0})
        outputs, shapes, dtypes = node.output, node.output_shapes, node.output_dtypes
        ctx.remove_node(node.name)
        ctx.make_node("Identity", [total], name=node.name, outputs=outputs, shapes=shapes, dtypes=dtypes)


@tf_op("ScaleAndTranslate")
class ScaleAndTranslate:
    """tf.image.resize(..., antialias=True) (Keras' Resizing with antialias): ONNX Resize with antialias=1 (opset 18),
    linear for TensorFlow's triangle kernel, cubic (a = -0.5) for keyscubic, half-pixel coordinates, weights
    outside the image dropped and the rest renormalised (exclude_outside, as TensorFlow's kernels do). Only plain
    resizing (translation 0, scale = output / input size) is mapped; other kernels are refused with the reason."""

    KERNELS = {"triangle": ("linear", None), "keyscubic": ("cubic", -0.5)}

    @classmethod
    def version_18(cls, ctx, node, **kwargs) -> None:  # noqa: ANN001, ANN003
        kernel = node.get_attr_value("kernel_type")
        kernel = kernel.decode() if isinstance(kernel, bytes) else kernel
        utils.make_sure(kernel in cls.KERNELS, "ScaleAndTranslate kernel %s has no ONNX Resize mode", kernel)
        utils.make_sure(node.inputs[1].is_const() and node.inputs[3].is_const(),
                        "ScaleAndTranslate needs a constant output size and translation")
        utils.make_sure(not np.any(node.inputs[3].get_tensor_value(as_list=False)),
                        "ScaleAndTranslate with a translation has no ONNX Resize counterpart")
        mode, cubic_coeff_a = cls.KERNELS[kernel]
        size = node.inputs[1].get_tensor_value(as_list=False).astype(np.int64)
        nchw = ctx.make_node("Transpose", [node.input[0]], {"perm": constants.NHWC_TO_NCHW})
        batch_channels = GraphBuilder(ctx).make_slice(
            {"data": ctx.make_node("Shape", [nchw.output[0]]).output[0], "starts": [0], "ends": [2], "axes": [0]})
        sizes = ctx.make_node("Concat", [batch_channels, ctx.make_const(utils.make_name("size"), size).output[0]],
                              attr={"axis": 0})
        attr = {"mode": mode, "antialias": int(bool(node.get_attr_value("antialias", True))),
                "coordinate_transformation_mode": "half_pixel", "exclude_outside": 1}
        if cubic_coeff_a is not None:
            attr["cubic_coeff_a"] = cubic_coeff_a
        empty = ctx.make_const(utils.make_name("empty"), np.array([], dtype=np.float32)).output[0]
        resize = ctx.make_node("Resize", [nchw.output[0], empty, empty, sizes.output[0]], attr=attr)
        outputs, shapes, dtypes = node.output, node.output_shapes, node.output_dtypes
        ctx.remove_node(node.name)
        ctx.make_node("Transpose", resize.output, {"perm": constants.NCHW_TO_NHWC}, name=node.name,
                      outputs=outputs, shapes=shapes, dtypes=dtypes)
