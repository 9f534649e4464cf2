#!/usr/bin/env python3
"""Build the small seeded-random ONNX models the Core ML checks convert
(onnx.helper + numpy only; no torch, no download), in the shapes exporters
give these architectures:

  cnn.onnx      ResNet-style CNN: Conv+BatchNorm+Relu stem, MaxPool, two
                residual stages (stride-2 downsample with a 1x1 projection),
                GlobalAveragePool, Flatten, Gemm. input [batch, 3, 64, 64].
  vit.onnx      ViT-style encoder: 8x8 patch Conv, Reshape/Transpose to
                tokens, class token Concat, position Add, 2 pre-LN layers
                (attention split into heads, Softmax, GELU erf MLP), final
                LayerNorm, class-token Gather, Gemm head. input [batch, 3, 32, 32].
  gpt.onnx      GPT-style decoder: token Gather + position Gather(Range), 2
                pre-LN layers with a causal mask sliced from a constant
                [max, max] buffer by Shape (Where with a large negative),
                GELU tanh form (Pow 3, Tanh), final LayerNorm, logits through
                the tied (transposed) embedding. input_ids int64 [batch, seq].
  gpt_kv.onnx   the same decoder with a KV cache, in the interface Hugging
                Face exports give GPT-2 with past: input_ids [batch, seq],
                attention_mask [batch, total] (total = past + seq),
                position_ids [batch, seq], past_key_values.{l}.key/value
                [batch, heads, past, head_dim]; outputs logits and
                present.{l}.key/value = Concat(past, new) on axis 2. The
                causal mask is sliced from a constant buffer at rows
                [total - seq, total) by Shape, the padding mask is
                (1 - attention_mask) * float32 min, as those exports do.

Usage: make_coreml_models.py --out DIR [--seed 0]
"""

import argparse
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class G:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, base):
        self.n += 1
        return f"{base}_{self.n}"

    def const(self, arr, base="c"):
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def w(self, *shape, scale=None):
        fan_in = shape[0] if len(shape) == 2 else int(np.prod(shape[1:]))
        s = scale if scale is not None else 1.0 / math.sqrt(fan_in)
        return self.const(self.rng.normal(0, s, shape).astype(np.float32), "w")

    def op(self, op, inputs, n_out=1, **attrs):
        outs = [self.name(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.name(op), **attrs))
        return outs[0] if n_out == 1 else outs

    def linear(self, x, din, dout):
        return self.op("Add", [self.op("MatMul", [x, self.w(din, dout)]), self.w(dout, scale=0.02)])

    def layernorm(self, x, d):
        g = self.const((1 + 0.1 * self.rng.standard_normal(d)).astype(np.float32), "ln_g")
        b = self.const((0.1 * self.rng.standard_normal(d)).astype(np.float32), "ln_b")
        return self.op("LayerNormalization", [x, g, b], axis=-1, epsilon=1e-5)

    def model(self, inputs, outputs, name):
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tessera-make-coreml-models")
        onnx.checker.check_model(m)
        return m


def attention(g, x, d, heads, mask_add=None, seq_dim_name=None):
    """x [B, S, d] -> [B, S, d]; heads split by Reshape/Transpose as exporters do."""
    hd = d // heads
    shape = g.const(np.array([0, 0, heads, hd], np.int64), "shape")
    def split(t):
        return g.op("Transpose", [g.op("Reshape", [t, shape])], perm=[0, 2, 1, 3])
    q, k, v = (split(g.linear(x, d, d)) for _ in range(3))
    kt = g.op("Transpose", [k], perm=[0, 1, 3, 2])
    s = g.op("Div", [g.op("MatMul", [q, kt]), g.const(np.array(math.sqrt(hd), np.float32))])
    if mask_add is not None:
        s = mask_add(s)
    p = g.op("Softmax", [s], axis=-1)
    o = g.op("Transpose", [g.op("MatMul", [p, v])], perm=[0, 2, 1, 3])
    o = g.op("Reshape", [o, g.const(np.array([0, 0, d], np.int64), "shape")])
    return g.linear(o, d, d)


def gelu_erf(g, x):
    e = g.op("Erf", [g.op("Div", [x, g.const(np.array(math.sqrt(2), np.float32))])])
    return g.op("Mul", [g.op("Mul", [x, g.op("Add", [e, g.const(np.array(1, np.float32))])]), g.const(np.array(0.5, np.float32))])


def gelu_tanh(g, x):
    x3 = g.op("Pow", [x, g.const(np.array(3, np.float32))])
    inner = g.op("Mul", [g.op("Add", [x, g.op("Mul", [x3, g.const(np.array(0.044715, np.float32))])]), g.const(np.array(math.sqrt(2 / math.pi), np.float32))])
    t = g.op("Add", [g.op("Tanh", [inner]), g.const(np.array(1, np.float32))])
    return g.op("Mul", [g.op("Mul", [x, t]), g.const(np.array(0.5, np.float32))])


def cnn(seed):
    g = G(seed)
    def conv_bn(x, cin, cout, k, stride, relu=True):
        pad = k // 2
        y = g.op("Conv", [x, g.w(cout, cin, k, k)], kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)
        bn = [g.const((1 + 0.1 * g.rng.standard_normal(cout)).astype(np.float32)),
              g.const((0.1 * g.rng.standard_normal(cout)).astype(np.float32)),
              g.const((0.1 * g.rng.standard_normal(cout)).astype(np.float32)),
              g.const((0.5 + g.rng.random(cout)).astype(np.float32))]
        y = g.op("BatchNormalization", [y] + bn, epsilon=1e-5)
        return g.op("Relu", [y]) if relu else y
    x = conv_bn("image", 3, 16, 7, 2)
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 16
    for cout, stride in [(16, 1), (32, 2)]:
        y = conv_bn(x, cin, cout, 3, stride)
        y = conv_bn(y, cout, cout, 3, 1, relu=False)
        sc = x if (cin == cout and stride == 1) else conv_bn(x, cin, cout, 1, stride, relu=False)
        x = g.op("Relu", [g.op("Add", [y, sc])])
        cin = cout
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)
    logits = g.op("Gemm", [x, g.w(10, cin), g.w(10, scale=0.1)], transB=1)
    g.nodes[-1].output[0] = "logits"
    return g.model([helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 64, 64])],
                   [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], "cnn")


def vit(seed, d=64, heads=4, layers=2, patch=8, img=32):
    g = G(seed)
    n = (img // patch) ** 2
    x = g.op("Conv", ["pixels", g.w(d, 3, patch, patch)], kernel_shape=[patch, patch], strides=[patch, patch])
    x = g.op("Transpose", [g.op("Reshape", [x, g.const(np.array([0, d, -1], np.int64), "shape")])], perm=[0, 2, 1])
    # Class token expanded to the batch taken from the input's shape.
    batch = g.op("Gather", [g.op("Shape", ["pixels"]), g.const(np.array([0], np.int64))], axis=0)
    cls_shape = g.op("Concat", [batch, g.const(np.array([1, d], np.int64))], axis=0)
    cls = g.op("Expand", [g.w(1, 1, d, scale=0.02), cls_shape])
    x = g.op("Concat", [cls, x], axis=1)
    x = g.op("Add", [x, g.w(1, n + 1, d, scale=0.02)])
    for _ in range(layers):
        x = g.op("Add", [x, attention(g, g.layernorm(x, d), d, heads)])
        h = g.layernorm(x, d)
        x = g.op("Add", [x, g.linear(gelu_erf(g, g.linear(h, d, 4 * d)), 4 * d, d)])
    x = g.layernorm(x, d)
    cls_out = g.op("Gather", [x, g.const(np.array(0, np.int64))], axis=1)
    logits = g.op("Gemm", [cls_out, g.w(d, 10), g.w(10, scale=0.1)])
    g.nodes[-1].output[0] = "logits"
    return g.model([helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, img, img])],
                   [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], "vit")


def gpt(seed, vocab=256, d=64, heads=4, layers=2, max_pos=128):
    g = G(seed)
    emb = g.w(vocab, d, scale=0.1)
    seq = g.op("Gather", [g.op("Shape", ["input_ids"]), g.const(np.array(1, np.int64))], axis=0)
    pos = g.op("Range", [g.const(np.array(0, np.int64)), seq, g.const(np.array(1, np.int64))])
    x = g.op("Add", [g.op("Gather", [emb, "input_ids"], axis=0), g.op("Gather", [g.w(max_pos, d, scale=0.1), pos], axis=0)])
    causal = g.const(np.tril(np.ones((1, 1, max_pos, max_pos), bool)), "causal")
    seq1 = g.op("Unsqueeze", [seq, g.const(np.array([0], np.int64))])
    zeros = g.const(np.array([0, 0], np.int64))
    axes = g.const(np.array([2, 3], np.int64))
    ends = g.op("Concat", [seq1, seq1], axis=0)
    mask = g.op("Slice", [causal, zeros, ends, axes])
    neg = g.const(np.array(-1e4, np.float32))
    def mask_add(s):
        return g.op("Where", [mask, s, neg])
    for _ in range(layers):
        x = g.op("Add", [x, attention(g, g.layernorm(x, d), d, heads, mask_add)])
        h = g.layernorm(x, d)
        x = g.op("Add", [x, g.linear(gelu_tanh(g, g.linear(h, d, 4 * d)), 4 * d, d)])
    x = g.layernorm(x, d)
    logits = g.op("MatMul", [x, g.op("Transpose", [emb], perm=[1, 0])])
    g.nodes[-1].output[0] = "logits"
    return g.model([helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
                   [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab])], "gpt")


def gpt_kv(seed, vocab=256, d=64, heads=4, layers=2, max_pos=128):
    g = G(seed)
    hd = d // heads
    emb = g.w(vocab, d, scale=0.1)
    x = g.op("Add", [g.op("Gather", [emb, "input_ids"], axis=0), g.op("Gather", [g.w(max_pos, d, scale=0.1), "position_ids"], axis=0)])
    fmin = np.finfo(np.float32).min
    pad = g.op("Mul", [g.op("Sub", [g.const(np.array(1, np.float32)), g.op("Cast", [g.op("Unsqueeze", ["attention_mask", g.const(np.array([1, 2], np.int64))])], to=TensorProto.FLOAT)]),
                       g.const(np.array(fmin, np.float32))])
    causal = g.const(np.tril(np.ones((1, 1, max_pos, max_pos), bool)), "causal")
    shape = g.const(np.array([0, 0, heads, hd], np.int64), "shape")
    def split(t):
        return g.op("Transpose", [g.op("Reshape", [t, shape])], perm=[0, 2, 1, 3])
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab])]
    for l in range(layers):
        h = g.layernorm(x, d)
        q, k, v = (split(g.linear(h, d, d)) for _ in range(3))
        kv = []
        for kind, new in [("key", k), ("value", v)]:
            past = f"past_key_values.{l}.{kind}"
            present = f"present.{l}.{kind}"
            inputs.append(helper.make_tensor_value_info(past, TensorProto.FLOAT, ["batch", heads, "past", hd]))
            outputs.append(helper.make_tensor_value_info(present, TensorProto.FLOAT, ["batch", heads, "total", hd]))
            g.nodes.append(helper.make_node("Concat", [past, new], [present], name=g.name("Concat"), axis=2))
            kv.append(present)
        k_all, v_all = kv
        s = g.op("Div", [g.op("MatMul", [q, g.op("Transpose", [k_all], perm=[0, 1, 3, 2])]), g.const(np.array(math.sqrt(hd), np.float32))])
        key_len = g.op("Gather", [g.op("Shape", [k_all]), g.const(np.array([2], np.int64))], axis=0)
        q_len = g.op("Gather", [g.op("Shape", [q]), g.const(np.array([2], np.int64))], axis=0)
        rows = g.op("Slice", [causal, g.op("Sub", [key_len, q_len]), key_len, g.const(np.array([2], np.int64))])
        m = g.op("Slice", [rows, g.const(np.array([0], np.int64)), key_len, g.const(np.array([3], np.int64))])
        s = g.op("Add", [g.op("Where", [m, s, g.const(np.array(fmin, np.float32))]), pad])
        o = g.op("Transpose", [g.op("MatMul", [g.op("Softmax", [s], axis=-1), v_all])], perm=[0, 2, 1, 3])
        x = g.op("Add", [x, g.linear(g.op("Reshape", [o, g.const(np.array([0, 0, d], np.int64), "shape")]), d, d)])
        h = g.layernorm(x, d)
        x = g.op("Add", [x, g.linear(gelu_tanh(g, g.linear(h, d, 4 * d)), 4 * d, d)])
    x = g.layernorm(x, d)
    g.nodes.append(helper.make_node("MatMul", [x, g.op("Transpose", [emb], perm=[1, 0])], ["logits"], name=g.name("MatMul")))
    return g.model(inputs, outputs, "gpt_kv")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, build in [("cnn", cnn), ("vit", vit), ("gpt", gpt), ("gpt_kv", gpt_kv)]:
        onnx.save(build(a.seed), out / f"{name}.onnx")
        print(out / f"{name}.onnx")


if __name__ == "__main__":
    main()
