#!/usr/bin/env python3
"""Build a BERT-style encoder as ONNX (opset 17) with seeded random weights.

The graph is written node by node with onnx.helper (no torch, no download), in
the form exporters give BERT-base:

  inputs   input_ids int64 [batch, seq], attention_mask int64 [batch, seq]
  embed    Gather(word) + Gather(position, Range(seq)) + Gather(token type,
           zeros), LayerNormalization
  mask     (1 - Cast(mask)) * -10000, Unsqueeze to [batch, 1, 1, seq]
  layer    Q/K/V: MatMul + Add, Reshape to heads, Transpose; MatMul(Q, K^T),
           Div by sqrt(head_dim), Add mask, Softmax(-1), MatMul with V,
           Transpose/Reshape back; MatMul + Add, residual Add, LayerNorm;
           FFN MatMul + Add, GELU as x * (1 + Erf(x / sqrt2)) * 0.5,
           MatMul + Add, residual Add, LayerNorm
  output   last_hidden_state float [batch, seq, hidden]

With --attention-op (opset 23) each layer's attention is instead one ONNX
`Attention` node on the projections' [batch, seq, hidden] outputs (3-D, heads
as attributes, no Reshape or Transpose), the additive mask expanded once to
[batch, 1, seq, seq] (ONNX Runtime takes no mask broadcast over the query
axis); the rest of the layer is unchanged.

Weights and biases are normal(0, 0.02) from numpy's default_rng(seed);
LayerNorm scales are 1 and shifts 0 (BERT's initialization). `seq` must be at
most --max-pos (512).

Files in --out (default .cache/models/): bert.onnx, bert.params.json and, with
--int8, bert_int8.onnx from onnxruntime.quantization.quantize_dynamic with
QuantType.QInt8 (DynamicQuantizeLinear + MatMulInteger, as ORT users do).
Files whose params.json matches are reused. The fp32 model is checked with
ONNX Runtime before it is kept. BERT-base (the defaults) is about 440 MB, saved
inline; weights go to external data only past protobuf's 2 GB limit.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
OPSET = 17
# The first opset with the Attention operator.
ATTENTION_OPSET = 23
# Bump when the graph layout changes, so cached files are rebuilt.
BUILDER_VERSION = 1
PROTOBUF_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class BertParams:
    layers: int = 12
    hidden: int = 768
    heads: int = 12
    ffn: int = 3072
    vocab: int = 30522
    seed: int = 0
    max_pos: int = 512
    type_vocab: int = 2
    # True: one ONNX Attention node per layer (opset 23).
    attention_op: bool = False

    def check(self) -> None:
        if self.hidden % self.heads:
            raise SystemExit(f"hidden {self.hidden} is not a multiple of heads {self.heads}")
        for k, v in asdict(self).items():
            if k not in ("seed", "attention_op") and v <= 0:
                raise SystemExit(f"--{k.replace('_', '-')} must be positive, got {v}")

    def n_params(self) -> int:
        h, f = self.hidden, self.ffn
        embed = (self.vocab + self.max_pos + self.type_vocab) * h + 2 * h
        layer = 4 * (h * h + h) + (h * f + f) + (f * h + h) + 4 * h
        return embed + self.layers * layer


SMOKE = BertParams(layers=2, hidden=64, heads=2, ffn=128, vocab=100)


class GraphBuilder:
    """Collects nodes and initializers; every node output gets a unique name."""

    def __init__(self, seed: int):
        self.nodes = []
        self.inits = []
        self.rng = np.random.default_rng(seed)
        self._n = 0

    def const(self, name: str, value) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, name: str, shape: tuple[int, ...], std: float = 0.02) -> str:
        return self.const(name, (self.rng.standard_normal(shape, dtype=np.float32) * np.float32(std)))

    def op(self, op_type: str, inputs: list[str], name: str | None = None, **attrs) -> str:
        from onnx import helper

        self._n += 1
        out = name or f"{op_type.lower()}_{self._n}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"{op_type}_{self._n}", **attrs))
        return out


def linear(g: GraphBuilder, x: str, prefix: str, n_in: int, n_out: int) -> str:
    w = g.weight(f"{prefix}.weight", (n_in, n_out))
    b = g.weight(f"{prefix}.bias", (n_out,))
    return g.op("Add", [g.op("MatMul", [x, w]), b])


def layer_norm(g: GraphBuilder, x: str, prefix: str, hidden: int, name: str | None = None) -> str:
    scale = g.const(f"{prefix}.weight", np.ones(hidden, np.float32))
    bias = g.const(f"{prefix}.bias", np.zeros(hidden, np.float32))
    return g.op("LayerNormalization", [x, scale, bias], name=name, axis=-1, epsilon=1e-12)


def encoder_layer(g: GraphBuilder, x: str, mask: str, p: BertParams, i: int) -> str:
    pre = f"encoder.layer.{i}"
    hd = p.hidden // p.heads
    heads_shape = f"{pre}.heads_shape"
    g.const(heads_shape, np.array([0, 0, p.heads, hd], np.int64))

    def split_heads(t: str, perm: list[int]) -> str:
        return g.op("Transpose", [g.op("Reshape", [t, heads_shape])], perm=perm)

    if p.attention_op:
        q, k, v = (linear(g, x, f"{pre}.attention.{n}", p.hidden, p.hidden) for n in ("query", "key", "value"))
        ctx = g.op("Attention", [q, k, v, mask], q_num_heads=p.heads, kv_num_heads=p.heads)
    else:
        q = split_heads(linear(g, x, f"{pre}.attention.query", p.hidden, p.hidden), [0, 2, 1, 3])
        k = split_heads(linear(g, x, f"{pre}.attention.key", p.hidden, p.hidden), [0, 2, 3, 1])
        v = split_heads(linear(g, x, f"{pre}.attention.value", p.hidden, p.hidden), [0, 2, 1, 3])
        scores = g.op("Div", [g.op("MatMul", [q, k]), "const.sqrt_head_dim"])
        probs = g.op("Softmax", [g.op("Add", [scores, mask])], axis=-1)
        ctx = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, "const.hidden_shape"])
    attn = linear(g, ctx, f"{pre}.attention.output", p.hidden, p.hidden)
    x = layer_norm(g, g.op("Add", [attn, x]), f"{pre}.attention.LayerNorm", p.hidden)

    h = linear(g, x, f"{pre}.intermediate", p.hidden, p.ffn)
    erf = g.op("Erf", [g.op("Div", [h, "const.sqrt2"])])
    h = g.op("Mul", [g.op("Mul", [h, g.op("Add", [erf, "const.one"])]), "const.half"])
    out = linear(g, h, f"{pre}.output", p.ffn, p.hidden)
    last = i == p.layers - 1
    return layer_norm(g, g.op("Add", [out, x]), f"{pre}.output.LayerNorm", p.hidden, name="last_hidden_state" if last else None)


def build_model(p: BertParams):
    """The encoder as an onnx.ModelProto."""
    import onnx
    from onnx import TensorProto, helper

    p.check()
    g = GraphBuilder(p.seed)
    hd = p.hidden // p.heads
    for name, value in [
        ("const.zero_i64", np.array(0, np.int64)),
        ("const.one_i64", np.array(1, np.int64)),
        ("const.one", np.array(1.0, np.float32)),
        ("const.half", np.array(0.5, np.float32)),
        ("const.sqrt2", np.array(math.sqrt(2.0), np.float32)),
        ("const.sqrt_head_dim", np.array(math.sqrt(hd), np.float32)),
        ("const.mask_fill", np.array(-10000.0, np.float32)),
        ("const.mask_axes", np.array([1, 2], np.int64)),
        ("const.hidden_shape", np.array([0, 0, p.hidden], np.int64)),
        ("const.one_1d", np.array([1], np.int64)),
        ("const.ones_2", np.array([1, 1], np.int64)),
    ]:
        g.const(name, value)

    word = g.weight("embeddings.word_embeddings.weight", (p.vocab, p.hidden))
    pos = g.weight("embeddings.position_embeddings.weight", (p.max_pos, p.hidden))
    typ = g.weight("embeddings.token_type_embeddings.weight", (p.type_vocab, p.hidden))

    ids_shape = g.op("Shape", ["input_ids"])
    seq_len = g.op("Gather", [ids_shape, "const.one_i64"], axis=0)
    position_ids = g.op("Range", ["const.zero_i64", seq_len, "const.one_i64"])
    token_type_ids = g.op("ConstantOfShape", [ids_shape], value=helper.make_tensor("zero", TensorProto.INT64, [1], [0]))
    x = g.op("Add", [g.op("Gather", [word, "input_ids"], axis=0), g.op("Gather", [typ, token_type_ids], axis=0)])
    x = g.op("Add", [x, g.op("Gather", [pos, position_ids], axis=0)])
    x = layer_norm(g, x, "embeddings.LayerNorm", p.hidden)

    mask = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    mask = g.op("Mul", [g.op("Sub", ["const.one", mask]), "const.mask_fill"])
    mask = g.op("Unsqueeze", [mask, "const.mask_axes"])
    if p.attention_op:
        # [batch, 1, 1, seq] broadcast against [1, 1, seq, 1].
        seq_1d = g.op("Gather", [ids_shape, "const.one_1d"], axis=0)
        target = g.op("Concat", ["const.ones_2", seq_1d, "const.one_1d"], axis=0)
        mask = g.op("Expand", [mask, target])

    for i in range(p.layers):
        x = encoder_layer(g, x, mask, p, i)

    dims = ["batch", "seq"]
    graph = helper.make_graph(
        g.nodes,
        "bert_encoder",
        [helper.make_tensor_value_info(n, TensorProto.INT64, dims) for n in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [*dims, p.hidden])],
        initializer=g.inits,
    )
    opset = ATTENTION_OPSET if p.attention_op else OPSET
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tessera-make_bert")
    model.ir_version = 10 if p.attention_op else 8  # onnxruntime 1.14+ reads 8; opset 23 needs 10
    onnx.checker.check_model(model, full_check=model.ByteSize() < PROTOBUF_LIMIT)
    return model


def save_model(model, path: Path) -> None:
    """Save through a temporary name, so an interrupted run leaves no partial file."""
    import onnx

    tmp = path.with_name(path.name + ".tmp")
    external = model.ByteSize() >= PROTOBUF_LIMIT
    if external:
        onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True, location=path.name + ".data")
    else:
        onnx.save_model(model, str(tmp))
    os.replace(tmp, path)


def quantize_int8(src: Path, dst: Path, op_types: list[str] | None = None) -> None:
    """ONNX Runtime's dynamic quantization, int8 weights (what ORT users do);
    `op_types` limits it to those operators."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = dst.with_name(dst.stem + ".tmp.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its "consider pre-processing" advice is noise here
    try:
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=op_types)
    finally:
        root.setLevel(level)
    os.replace(tmp, dst)


def quantize_qdq(src: Path, dst: Path, vocab: int, seq: int, samples: int = 8, seed: int = 7) -> None:
    """ONNX Runtime's static quantization in its QDQ format (what its docs
    recommend for CPUs): the MatMuls' activations uint8 and weights int8 per
    column, ranges calibrated (min/max) on `samples` seeded random inputs of
    batch 1 and `seq` tokens."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    m = onnx.load(str(src), load_external_data=False)
    names = {i.name for i in m.graph.input} - {i.name for i in m.graph.initializer}

    class Inputs(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(seed)
            feeds = []
            for _ in range(samples):
                ids = rng.integers(0, vocab, size=(1, seq), dtype=np.int64)
                all_ = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
                feeds.append({n: all_[n] for n in names})
            self.feeds = iter(feeds)

        def get_next(self):
            return next(self.feeds, None)

    tmp = dst.with_name(dst.stem + ".tmp.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_static(str(src), str(tmp), Inputs(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    finally:
        root.setLevel(level)
    os.replace(tmp, dst)


def validate(path: Path, hidden: int, vocab: int, batch: int = 2, seq: int = 8) -> None:
    """Run the model in ONNX Runtime on a padded batch; raise if it fails or is not finite."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    ids = rng.integers(0, vocab, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), np.int64)
    mask[1:, seq // 2 :] = 0
    (out,) = sess.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask})
    if out.shape != (batch, seq, hidden) or out.dtype != np.float32 or not np.isfinite(out).all():
        raise SystemExit(f"{path}: ONNX Runtime gave {out.dtype} {out.shape} (finite: {np.isfinite(out).all()}), "
                         f"expected float32 {(batch, seq, hidden)}")
    # LayerNorm with unit scale and zero shift: each row has mean 0, variance 1.
    if abs(float(out.mean())) > 1e-3 or abs(float(out.var()) - 1.0) > 1e-2:
        raise SystemExit(f"{path}: output mean {out.mean():.3g} var {out.var():.3g} is not a unit LayerNorm output")


def ensure(out_dir: Path, p: BertParams, int8: bool = False, log=print) -> dict[str, Path]:
    """Build (or reuse) the models in out_dir; returns {'fp32': path[, 'int8': path]}."""
    p.check()
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32 = out_dir / "bert.onnx"
    q8 = out_dir / "bert_int8.onnx"
    meta_path = out_dir / "bert.params.json"
    params = asdict(p)
    if not p.attention_op:
        # Files built before the option existed stay valid.
        params.pop("attention_op")
    meta = {"params": params, "opset": ATTENTION_OPSET if p.attention_op else OPSET, "builder": BUILDER_VERSION}
    old = json.loads(meta_path.read_text()) if meta_path.exists() else None
    if old != meta or not fp32.exists():
        for f in (meta_path, q8, fp32, out_dir / "bert.onnx.data"):
            f.unlink(missing_ok=True)
        log(f"make_bert: building {fp32} ({p.n_params() / 1e6:.1f} M parameters)")
        save_model(build_model(p), fp32)
        validate(fp32, p.hidden, p.vocab)
        meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    else:
        log(f"make_bert: reusing {fp32} (same parameters)")
    paths = {"fp32": fp32}
    if int8:
        if not q8.exists():
            log(f"make_bert: quantizing to {q8}")
            # ORT would turn the ONNX Attention nodes into its QAttention,
            # which rejects their head-count attributes: MatMuls only.
            quantize_int8(fp32, q8, ["MatMul"] if p.attention_op else None)
        else:
            log(f"make_bert: reusing {q8}")
        paths["int8"] = q8
    return paths


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / ".cache/models"), help="output folder (default .cache/models/)")
    d = BertParams()
    for field in ("layers", "hidden", "heads", "ffn", "vocab", "seed"):
        ap.add_argument(f"--{field}", type=int, default=getattr(d, field))
    ap.add_argument("--max-pos", type=int, default=d.max_pos, help="position embeddings (longest seq)")
    ap.add_argument("--int8", action="store_true", help="also write bert_int8.onnx (ORT dynamic quantization)")
    ap.add_argument("--smoke", action="store_true", help="tiny model: 2 layers, hidden 64, 2 heads, ffn 128, vocab 100")
    ap.add_argument("--attention-op", action="store_true", help="one ONNX Attention node per layer (opset 23)")
    args = ap.parse_args()
    if args.smoke:
        p = dataclasses.replace(SMOKE, attention_op=args.attention_op)
    else:
        p = BertParams(layers=args.layers, hidden=args.hidden, heads=args.heads, ffn=args.ffn, vocab=args.vocab,
                       seed=args.seed, max_pos=args.max_pos, attention_op=args.attention_op)
    paths = ensure(Path(args.out), p, int8=args.int8)
    for kind, path in paths.items():
        print(f"{kind}: {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
