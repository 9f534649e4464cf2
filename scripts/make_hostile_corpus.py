#!/usr/bin/env python3
"""Generates the hostile-model corpus in tests/hostile/ and the Python-made
fixtures in crates/tessera-onnx/tests/data/.

Each file in tests/hostile/ is a small model that a loader must either
reject with a clear error or load without trouble; the expected outcome of
each is listed in crates/tessera-onnx/tests/hostile.rs (every file there must
appear in that table). Run from the repository root:

    .venv/bin/python scripts/make_hostile_corpus.py

The output is deterministic, so re-running it leaves git clean.
"""

import os
import random
import shutil
import struct
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOSTILE = os.path.join(ROOT, "tests", "hostile")
DATA = os.path.join(ROOT, "crates", "tessera-onnx", "tests", "data")

OPSET = [helper.make_opsetid("", 17)]


# --- raw protobuf helpers (for files onnx.helper refuses to make) ---------


def varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def key(field: int, wire: int) -> bytes:
    return varint((field << 3) | wire)


def ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return key(field, 2) + varint(len(payload)) + payload


def vint(field: int, v: int) -> bytes:
    return key(field, 0) + varint(v & 0xFFFFFFFFFFFFFFFF)


# --- model helpers ---------------------------------------------------------


def model(nodes, inputs, outputs, inits=(), functions=(), opsets=None, **kw) -> onnx.ModelProto:
    g = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), initializer=list(inits))
    m = helper.make_model(g, opset_imports=opsets or OPSET, functions=list(functions), **kw)
    m.ir_version = 8
    return m


def f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def relu_model() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.arange(64, dtype=np.float32).reshape(8, 8), "w")
    return model(
        [helper.make_node("MatMul", ["x", "w"], ["t"], name="mm"), helper.make_node("Relu", ["t"], ["y"], name="r")],
        [f32("x", ["batch", 8])],
        [f32("y", ["batch", 8])],
        [w],
    )


def one_init_model(t: TensorProto) -> onnx.ModelProto:
    """y = Identity(initializer)."""
    return model([helper.make_node("Identity", [t.name], ["y"], name="id")], [], [f32("y", None)], [t])


def raw_one_init_model(tensor: bytes) -> bytes:
    """one_init_model for a tensor given as raw bytes (fields that the
    Python protobuf classes refuse to hold)."""
    node = helper.make_node("Identity", ["w"], ["y"], name="id").SerializeToString()
    out = f32("y", None).SerializeToString()
    graph = ld(1, node) + ld(2, b"g") + ld(5, tensor) + ld(12, out)
    return vint(1, 8) + ld(8, OPSET[0].SerializeToString()) + ld(7, graph)


def external_tensor(name, location, offset=None, length=None, dims=(4,)):
    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(dims))
    t.data_location = TensorProto.EXTERNAL
    entries = [("location", location)]
    if offset is not None:
        entries.append(("offset", str(offset)))
    if length is not None:
        entries.append(("length", str(length)))
    for k, v in entries:
        e = t.external_data.add()
        e.key, e.value = k, v
    return t


def write(folder, name, data):
    if isinstance(data, onnx.ModelProto):
        data = data.SerializeToString()
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


# --- the hostile corpus ----------------------------------------------------


def hostile():
    if os.path.isdir(HOSTILE):
        shutil.rmtree(HOSTILE)
    os.makedirs(HOSTILE)
    w = lambda name, data: write(HOSTILE, name, data)  # noqa: E731

    good = relu_model().SerializeToString()
    w("ok_relu.onnx", good)
    w("empty.onnx", b"")
    w("truncated.onnx", good[: len(good) * 2 // 3])
    w("random_bytes.onnx", random.Random(1234).randbytes(512))
    w("wrong_magic_png.onnx", b"\x89PNG\r\n\x1a\n" + bytes(range(64)))
    w("text_file.onnx", b"this is not an onnx model, just some text\n" * 4)
    w("no_graph.onnx", vint(1, 8) + ld(8, ld(1, b"") + vint(2, 17)))

    # Sizes and shapes.
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 40], raw_data=b"\0" * 16)
    w("huge_dims.onnx", one_init_model(t))
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 20, 1 << 20], raw_data=b"\0" * 16)
    w("huge_numel.onnx", one_init_model(t))
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[-1, 4], raw_data=b"\0" * 16)
    w("negative_dims.onnx", one_init_model(t))
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1] * 20000, raw_data=b"\0" * 4)
    w("huge_rank.onnx", one_init_model(t))
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2, 3], raw_data=b"\0" * 20)
    w("raw_data_mismatch.onnx", one_init_model(t))
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4], float_data=[1, 2, 3])
    w("typed_count_mismatch.onnx", one_init_model(t))
    t = TensorProto(name="w", data_type=TensorProto.INT64, dims=[2], float_data=[1, 2])
    w("typed_field_mismatch.onnx", one_init_model(t))
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2], float_data=[1, 2], raw_data=b"\0" * 8)
    w("two_data_fields.onnx", one_init_model(t))
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    w("no_data.onnx", one_init_model(t))
    t = TensorProto(name="w", data_type=99, dims=[1], raw_data=b"\0")
    w("unknown_dtype.onnx", one_init_model(t))
    t = helper.make_tensor("w", TensorProto.STRING, [2], [b"a", b"b"])
    w("string_initializer.onnx", one_init_model(t))
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1], raw_data=b"\0" * 4)
    w("bad_data_location.onnx", raw_one_init_model(t.SerializeToString() + vint(14, 7)))

    # Zero-size tensors load fine.
    z = TensorProto(name="z", data_type=TensorProto.FLOAT, dims=[0, 3])
    w(
        "zero_size.onnx",
        model(
            [helper.make_node("Concat", ["x", "z"], ["y"], name="cat", axis=0)],
            [f32("x", [0, 3])],
            [f32("y", [0, 3])],
            [z],
        ),
    )

    # Graph structure.
    w(
        "cyclic.onnx",
        model(
            [helper.make_node("Add", ["x", "q"], ["p"], name="a"), helper.make_node("Relu", ["p"], ["q"], name="b")],
            [f32("x", [2])],
            [f32("q", [2])],
        ),
    )
    w(
        "missing_value.onnx",
        model([helper.make_node("Add", ["x", "ghost"], ["y"], name="add")], [f32("x", [2])], [f32("y", [2])]),
    )
    w(
        "output_never_produced.onnx",
        model([helper.make_node("Relu", ["x"], ["y"], name="r")], [f32("x", [2])], [f32("nowhere", [2])]),
    )
    w(
        "duplicate_producer.onnx",
        model(
            [helper.make_node("Relu", ["x"], ["y"], name="r1"), helper.make_node("Neg", ["x"], ["y"], name="r2")],
            [f32("x", [2])],
            [f32("y", [2])],
        ),
    )
    w(
        "unknown_op.onnx",
        model(
            [helper.make_node("FrobnicateTensor", ["x"], ["y"], name="frob", domain="com.example", level=3)],
            [f32("x", [2])],
            [f32("y", [2])],
            opsets=OPSET + [helper.make_opsetid("com.example", 1)],
        ),
    )
    w(
        "dtype_mismatch.onnx",
        model(
            [helper.make_node("Add", ["x", "i"], ["y"], name="add")],
            [f32("x", [2]), helper.make_tensor_value_info("i", TensorProto.INT64, [2])],
            [f32("y", [2])],
        ),
    )
    seq = helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None)
    w(
        "sequence_input.onnx",
        model([helper.make_node("SequenceLength", ["s"], ["n"])], [seq], [helper.make_tensor_value_info("n", 7, [])]),
    )

    # Attributes.
    a = helper.make_attribute("axis", 1)
    a.floats.extend([1.0, 2.0])  # declared INT, carries FLOATS too
    n = helper.make_node("Softmax", ["x"], ["y"], name="sm")
    n.attribute.append(a)
    w("attr_type_mismatch.onnx", model([n], [f32("x", [2, 2])], [f32("y", [2, 2])]))
    n = helper.make_node("Softmax", ["x"], ["y"], name="sm").SerializeToString()
    n += ld(5, ld(1, b"axis") + vint(3, 1) + vint(20, 99))
    graph = ld(1, n) + ld(11, f32("x", [2, 2]).SerializeToString()) + ld(12, f32("y", [2, 2]).SerializeToString())
    w("attr_unknown_type.onnx", vint(1, 8) + ld(8, OPSET[0].SerializeToString()) + ld(7, graph))
    # A well-formed attribute of the wrong kind for the op: loads here, the
    # session reports it.
    n = helper.make_node("Softmax", ["x"], ["y"], name="sm", axis=1.5)
    w("attr_wrong_kind_for_op.onnx", model([n], [f32("x", [2, 2])], [f32("y", [2, 2])]))
    n = helper.make_node("Softmax", ["x"], ["y"], name="sm")
    a = n.attribute.add()
    a.name, a.ref_attr_name, a.type = "axis", "outer_axis", onnx.AttributeProto.INT
    w("attr_ref_outside_function.onnx", model([n], [f32("x", [2, 2])], [f32("y", [2, 2])]))

    # External data.
    w("ext_parent_escape.onnx", one_init_model(external_tensor("w", "../../etc/passwd")))
    w("ext_absolute.onnx", one_init_model(external_tensor("w", "/etc/passwd")))
    w("ext_missing_file.onnx", one_init_model(external_tensor("w", "no_such_file.bin")))
    w("ext_offset_beyond.bin", np.arange(4, dtype=np.float32).tobytes())
    w("ext_offset_beyond.onnx", one_init_model(external_tensor("w", "ext_offset_beyond.bin", offset=1000)))
    w("ext_offset_overflow.onnx", one_init_model(external_tensor("w", "ext_offset_beyond.bin", offset=(1 << 64) - 8)))
    w("ext_length_mismatch.onnx", one_init_model(external_tensor("w", "ext_offset_beyond.bin", length=8)))
    w("ext_ok.bin", b"\0" * 8 + np.array([1, 2, 3, 4], dtype=np.float32).tobytes())
    w("ext_ok.onnx", one_init_model(external_tensor("w", "ext_ok.bin", offset=8, length=16)))

    # Protobuf framing and declared sizes.
    w("huge_declared_length.onnx", vint(1, 8) + key(7, 2) + varint(1 << 62) + b"\0" * 32)
    tensor = vint(2, 1) + key(4, 2) + varint(1_000_000_000) + b"\0" * 16  # packed float_data overrunning
    w("packed_overrun.onnx", vint(1, 8) + ld(7, ld(5, tensor)))
    w("varint_overflow.onnx", key(1, 0) + b"\xff" * 11 + b"\x01")
    w("protobuf_group.onnx", vint(1, 8) + key(7, 3) + key(7, 4))
    # 20000 empty NodeProtos: 40 kB on disk, megabytes once decoded.
    w("many_empty_nodes.onnx", vint(1, 8) + ld(7, ld(1, b"") * 20000))
    bad_name = ld(3, b"\xff\xfe") + ld(4, b"Relu")
    w("bad_utf8_name.onnx", vint(1, 8) + ld(7, ld(1, bad_name)))

    # Deeply nested If subgraphs (3 messages per level), written raw since
    # Python's protobuf refuses to nest this deep.
    out_vi = f32("x", [1]).SerializeToString()
    body = ld(2, b"leaf") + ld(12, out_vi)
    for i in range(40):
        attr = ld(1, b"then_branch") + vint(20, 5) + ld(6, body)
        node = ld(1, b"c") + ld(2, b"x") + ld(3, f"if{i}".encode()) + ld(4, b"If") + ld(5, attr)
        body = ld(1, node) + ld(2, f"level{i}".encode()) + ld(12, out_vi)
    cond = helper.make_tensor_value_info("c", TensorProto.BOOL, []).SerializeToString()
    w("deep_nesting.onnx", vint(1, 8) + ld(8, OPSET[0].SerializeToString()) + ld(7, body + ld(11, cond)))

    # Model-local functions.
    fns = []
    depth = 24
    for i in range(depth):
        if i + 1 < depth:
            nodes = [
                helper.make_node(f"f{i + 1}", ["a"], ["t"], domain="bomb"),
                helper.make_node(f"f{i + 1}", ["t"], ["b"], domain="bomb"),
            ]
        else:
            nodes = [helper.make_node("Relu", ["a"], ["b"])]
        fns.append(helper.make_function("bomb", f"f{i}", ["a"], ["b"], nodes, OPSET))
    w(
        "function_bomb.onnx",
        model(
            [helper.make_node("f0", ["x"], ["y"], domain="bomb")],
            [f32("x", [2])],
            [f32("y", [2])],
            functions=fns,
            opsets=OPSET + [helper.make_opsetid("bomb", 1)],
        ),
    )
    # Few nodes but a 64 kB constant in the innermost function, called 2^13
    # times: half a gigabyte once inlined.
    fns = []
    depth = 14
    big = numpy_helper.from_array(np.zeros(16384, dtype=np.float32), "")
    for i in range(depth):
        if i + 1 < depth:
            nodes = [
                helper.make_node(f"g{i + 1}", ["a"], ["t"], domain="bomb"),
                helper.make_node(f"g{i + 1}", ["t"], ["b"], domain="bomb"),
            ]
        else:
            nodes = [helper.make_node("Constant", [], ["c"], value=big), helper.make_node("Add", ["a", "c"], ["b"])]
        fns.append(helper.make_function("bomb", f"g{i}", ["a"], ["b"], nodes, OPSET))
    w(
        "function_constant_bomb.onnx",
        model(
            [helper.make_node("g0", ["x"], ["y"], domain="bomb")],
            [f32("x", [16384])],
            [f32("y", [16384])],
            functions=fns,
            opsets=OPSET + [helper.make_opsetid("bomb", 1)],
        ),
    )
    rec = helper.make_function("loop", "self", ["a"], ["b"], [helper.make_node("self", ["a"], ["b"], domain="loop")], OPSET)
    w(
        "function_recursive.onnx",
        model(
            [helper.make_node("self", ["x"], ["y"], domain="loop")],
            [f32("x", [2])],
            [f32("y", [2])],
            functions=[rec],
            opsets=OPSET + [helper.make_opsetid("loop", 1)],
        ),
    )


# --- fixtures made by Python onnx for the loader's own tests ---------------


def fixtures():
    os.makedirs(DATA, exist_ok=True)
    inits = [
        numpy_helper.from_array(np.array([[1.5, -2.0, 3.25]], dtype=np.float32), "raw_f32"),
        helper.make_tensor("f32_typed", TensorProto.FLOAT, [3], [0.5, 1.5, -2.5]),
        helper.make_tensor("f16_typed", TensorProto.FLOAT16, [2], [1.5, -2.0]),
        helper.make_tensor("bf16_typed", TensorProto.BFLOAT16, [2], [1.5, -2.0]),
        helper.make_tensor("i8_typed", TensorProto.INT8, [3], [-128, 0, 127]),
        helper.make_tensor("u8_typed", TensorProto.UINT8, [2], [0, 255]),
        helper.make_tensor("bool_typed", TensorProto.BOOL, [3], [True, False, True]),
        helper.make_tensor("i16_typed", TensorProto.INT16, [2], [-300, 300]),
        helper.make_tensor("i32_typed", TensorProto.INT32, [2], [-7, 7]),
        helper.make_tensor("i64_typed", TensorProto.INT64, [2], [-(1 << 40), 1 << 40]),
        helper.make_tensor("u32_typed", TensorProto.UINT32, [2], [1, 4000000000]),
        helper.make_tensor("u64_typed", TensorProto.UINT64, [1], [1 << 63]),
        helper.make_tensor("f64_typed", TensorProto.DOUBLE, [2], [0.25, -1e300]),
        numpy_helper.from_array(np.zeros((0, 4), dtype=np.float32), "empty_f32"),
        # An initializer also listed as a graph input: a constant for us.
        numpy_helper.from_array(np.array([2.0], dtype=np.float32), "scale"),
    ]
    const_value = numpy_helper.from_array(np.array([4, 5], dtype=np.int64), "c")
    # A model-local function: y = x * alpha + bias(default 0.5), alpha and
    # bias referenced as attributes of the call.
    fn = helper.make_function(
        "local",
        "ScaleShift",
        ["x"],
        ["y"],
        [
            helper.make_node("Constant", [], ["alpha"], name="alpha_const"),
            helper.make_node("Constant", [], ["bias"]),
            helper.make_node("Mul", ["x", "alpha"], ["t"], name="mul"),
            helper.make_node("Add", ["t", "bias"], ["y"], name="add"),
        ],
        [helper.make_opsetid("", 17)],
        attributes=["alpha"],
    )
    for node, (attr_name, ref) in zip(fn.node[:2], [("value_float", "alpha"), ("value_float", "bias")]):
        a = node.attribute.add()
        a.name, a.ref_attr_name, a.type = attr_name, ref, onnx.AttributeProto.FLOAT
    d = fn.attribute_proto.add()
    d.CopyFrom(helper.make_attribute("bias", 0.5))
    nodes = [
        helper.make_node("Mul", ["x", "scale"], ["xs"], name="scale_mul"),
        helper.make_node("ScaleShift", ["xs"], ["ss"], domain="local", alpha=3.0),
        helper.make_node(
            "Conv",
            ["ss", "raw_f32"],
            ["conv"],
            kernel_shape=[1, 3],
            pads=[0, 1, 0, 1],
            auto_pad="NOTSET",
            alpha=0.25,
            group=1,
            names=["a", "b"],
            scales=[0.5, 0.25],
        ),
        helper.make_node("Constant", [], ["const"], value=const_value),
        helper.make_node("Identity", ["conv"], ["y"]),
    ]
    ins = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, None, 3]),
        helper.make_tensor_value_info("scale", TensorProto.FLOAT, [1]),
    ]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1, 2, "w"])]
    g = helper.make_graph(nodes, "python_features", ins, outs, initializer=inits)
    g.value_info.append(helper.make_tensor_value_info("xs", TensorProto.FLOAT, ["batch", 1, 2, 3]))
    g.value_info.append(helper.make_tensor_value_info("const", TensorProto.INT64, [2]))
    m = helper.make_model(
        g,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
        functions=[fn],
        producer_name="make_hostile_corpus",
        producer_version="1.0",
        doc_string="fixture made by onnx.helper",
    )
    m.ir_version = 8
    helper.set_model_props(m, {"author": "tessera", "purpose": "tests"})
    write(DATA, "python_features.onnx", m)


def main():
    if not os.path.isdir(os.path.join(ROOT, "crates")):
        sys.exit("run from the repository root")
    hostile()
    fixtures()
    print(f"wrote {len(os.listdir(HOSTILE))} files to {HOSTILE} and fixtures to {DATA}")


if __name__ == "__main__":
    main()
