"""The TensorRT ONNX parser check: accepts what TensorRT 10 parses, names the node it would refuse."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pspnet_deploy.errors import UserError
from pspnet_deploy.parser_check import Problem, check_onnx_for_tensorrt, format_problems


def _model(nodes, inits=(), inputs=None, outputs=None, opset=20, extra_opsets=()):
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 12])]
    outputs = outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])
    m.ir_version = 10
    return m


def _w(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name=name)


def _psp_like():
    """Conv -> static pooling (AveragePool + MatMul pair) -> Resize align_corners -> Concat -> ArgMax -> Cast."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="backbone/Conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="backbone/Relu"),
        helper.make_node("AveragePool", ["r"], ["p0"], name="ppm.pools.0.static_pool/AveragePool",
                         kernel_shape=[8, 12], strides=[8, 12]),
        helper.make_node("MatMul", ["ph", "r"], ["m1"], name="ppm.pools.1.static_pool/MatMul_h"),
        helper.make_node("MatMul", ["m1", "pwt"], ["p1"], name="ppm.pools.1.static_pool/MatMul_w"),
        helper.make_node("Resize", ["p0", "", "", "sz"], ["u0"], name="ppm/Resize", mode="linear",
                         coordinate_transformation_mode="align_corners"),
        helper.make_node("Resize", ["p1", "", "", "sz2"], ["u1"], name="ppm/Resize_1", mode="linear",
                         coordinate_transformation_mode="align_corners", axes=[2, 3]),
        helper.make_node("Concat", ["r", "u0", "u1"], ["cat"], name="ppm/Concat", axis=1),
        helper.make_node("ArgMax", ["cat"], ["am"], name="ArgMax", axis=1, keepdims=0),
        helper.make_node("Cast", ["am"], ["y"], name="Cast", to=TensorProto.INT32),
    ]
    inits = [_w("w", rng.normal(size=(4, 4, 3, 3)).astype(np.float32)),
             _w("ph", np.full((3, 8), 1 / 8, np.float32)), _w("pwt", np.full((12, 3), 1 / 12, np.float32)),
             _w("sz", np.array([1, 4, 8, 12], np.int64)), _w("sz2", np.array([8, 12], np.int64))]
    out = [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 8, 12])]
    return _model(nodes, inits, outputs=out)


def _names(problems):
    return [p.node for p in problems]


def test_accepts_a_clean_static_graph_and_it_runs():
    m = _psp_like()
    onnx.checker.check_model(m, full_check=True)
    assert check_onnx_for_tensorrt(m) == []
    import onnxruntime as ort

    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": np.random.default_rng(1).normal(size=(1, 4, 8, 12)).astype(np.float32)})[0]
    assert y.shape == (1, 8, 12) and y.dtype == np.int32


def test_accepts_path(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(_psp_like(), str(p))
    assert check_onnx_for_tensorrt(p) == []


@pytest.mark.parametrize("op", ["Det", "Unique", "BitShift", "StringNormalizer", "MatMulInteger", "Col2Im"])
def test_rejects_known_unsupported_op_and_names_the_node(op):
    m = _model([helper.make_node(op, ["x"], ["y"], name=f"bad_{op}")])
    probs = check_onnx_for_tensorrt(m)
    assert any(p.node == f"bad_{op}" and p.op_type == op and "not supported" in p.message for p in probs)
    assert f"bad_{op}" in format_problems(probs)


def test_rejects_unknown_op_fails_closed():
    m = _model([helper.make_node("FancyNewOp", ["x"], ["y"], name="n1")])
    assert "not in the TensorRT 10 ONNX parser support matrix" in str(check_onnx_for_tensorrt(m)[0])


def test_rejects_custom_domain():
    m = _model([helper.make_node("MyPlugin", ["x"], ["y"], name="plug", domain="com.example")],
               extra_opsets=[helper.make_opsetid("com.example", 1)])
    probs = check_onnx_for_tensorrt(m)
    assert _names(probs) == ["plug"] and "plugin" in probs[0].message


def test_opset_range():
    m = _model([helper.make_node("Relu", ["x"], ["y"], name="r")], opset=21)
    probs = check_onnx_for_tensorrt(m, trt_major=10)
    assert probs and probs[0].node == "<graph>" and "opset 21" in str(probs[0])
    assert check_onnx_for_tensorrt(m, trt_major=11) == []
    with pytest.raises(UserError, match="major version 7"):
        check_onnx_for_tensorrt(m, trt_major=7)


@pytest.mark.parametrize("attrs,needle", [
    (dict(mode="cubic", coordinate_transformation_mode="align_corners"), "mode 'cubic'"),
    (dict(mode="linear", coordinate_transformation_mode="half_pixel_symmetric"), "half_pixel_symmetric"),
    (dict(mode="linear", coordinate_transformation_mode="tf_crop_and_resize"), "tf_crop_and_resize"),
    (dict(mode="linear", antialias=1), "antialias"),
    (dict(mode="linear", keep_aspect_ratio_policy="not_larger"), "keep_aspect_ratio_policy"),
])
def test_resize_modes(attrs, needle):
    m = _model([helper.make_node("Resize", ["x", "", "", "sz"], ["y"], name="rs", **attrs)],
               [_w("sz", np.array([1, 4, 16, 24], np.int64))])
    probs = check_onnx_for_tensorrt(m)
    assert probs and all(p.node == "rs" for p in probs) and any(needle in p.message for p in probs)


def test_pooling_rules():
    m = _model([helper.make_node("MaxPool", ["x"], ["y"], name="mp", kernel_shape=[3, 3], dilations=[2, 2])])
    assert "dilations" in check_onnx_for_tensorrt(m)[0].message
    x1 = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])]
    m = _model([helper.make_node("AveragePool", ["x"], ["y"], name="ap", kernel_shape=[3])], inputs=x1)
    assert "1D pooling" in check_onnx_for_tensorrt(m)[0].message


def test_float64_tensor_rejected():
    m = _model([helper.make_node("Cast", ["x"], ["d"], name="to64", to=TensorProto.DOUBLE),
                helper.make_node("Cast", ["d"], ["y"], name="back", to=TensorProto.FLOAT)])
    probs = check_onnx_for_tensorrt(m)
    assert "to64" in _names(probs) and any("float64" in p.message for p in probs)


def test_int64_graph_output_is_fine_but_string_is_not():
    m = _model([helper.make_node("ArgMax", ["x"], ["y"], name="am", axis=1)],
               outputs=[helper.make_tensor_value_info("y", TensorProto.INT64, None)])
    assert check_onnx_for_tensorrt(m) == []


def _qdq(zp_value=0, zp_type=np.int8, per_axis=False, with_zp=True, scale=None):
    c = 4
    s = np.full((c,), 0.02, np.float32) if per_axis else np.float32(0.02)
    if scale is not None:
        s = scale
    ax = dict(axis=0) if per_axis else {}
    w = np.random.default_rng(0).normal(size=(c, 4, 3, 3)).astype(np.float32)
    wq = np.clip(np.round(w / 0.02), -127, 127).astype(np.int8)
    zpw = np.zeros((c,), np.int8) if per_axis else np.int8(0)
    x_in = ["x", "xs", "xz"] if with_zp else ["x", "xs"]
    nodes = [
        helper.make_node("QuantizeLinear", x_in, ["xq"], name="x_q"),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"] if with_zp else ["xq", "xs"], ["xd"], name="x_dq"),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], name="w_dq", **ax),
        helper.make_node("Conv", ["xd", "wd"], ["y"], name="conv", kernel_shape=[3, 3]),
    ]
    inits = [_w("xs", np.float32(0.05)), _w("wq", wq), _w("ws", s), _w("wz", zpw)]
    if with_zp:
        inits.append(_w("xz", np.asarray(zp_value, zp_type)))
    return _model(nodes, inits, outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 6, 10])])


@pytest.mark.parametrize("per_axis", [False, True])
def test_qdq_int8_symmetric_accepted(per_axis):
    m = _qdq(per_axis=per_axis)
    onnx.checker.check_model(m, full_check=True)
    assert check_onnx_for_tensorrt(m) == []


def test_qdq_nonzero_zero_point_rejected():
    probs = check_onnx_for_tensorrt(_qdq(zp_value=3))
    assert {"x_q", "x_dq"} <= set(_names(probs)) and all("zero point must be 0" in p.message for p in probs)


def test_qdq_uint8_rejected():
    probs = check_onnx_for_tensorrt(_qdq(zp_type=np.uint8))
    assert "x_q" in _names(probs) and any("uint8" in p.message for p in probs)
    probs = check_onnx_for_tensorrt(_qdq(with_zp=False))
    assert any(p.node == "x_q" and "uint8" in p.message for p in probs)


def test_int8_outside_qdq_rejected():
    m = _model([helper.make_node("Cast", ["x"], ["i8"], name="to_i8", to=TensorProto.INT8),
                helper.make_node("Cast", ["i8"], ["y"], name="back", to=TensorProto.FLOAT)])
    probs = check_onnx_for_tensorrt(m)
    assert "to_i8" in _names(probs) and any("Q/DQ" in p.message or "int8" in p.message for p in probs)


def test_non_constant_scale_rejected():
    nodes = [helper.make_node("Abs", ["x"], ["s"], name="abs"),
             helper.make_node("ReduceMax", ["s"], ["sc"], name="rmax", keepdims=0),
             helper.make_node("QuantizeLinear", ["x", "sc", "z"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "sc", "z"], ["y"], name="dq")]
    probs = check_onnx_for_tensorrt(_model(nodes, [_w("z", np.int8(0))]))
    assert any(p.node == "q" and "constant" in p.message for p in probs)


def test_problem_str():
    p = Problem("ppm/Resize", "Resize", "mode 'cubic' is unsupported")
    assert str(p) == "node 'ppm/Resize' (Resize): mode 'cubic' is unsupported"
    assert str(Problem("<graph>", "", "opset 21 ...")).startswith("model: ")
