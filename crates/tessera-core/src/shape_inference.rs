//! Type and shape inference over the IR, with symbolic dimensions.
//!
//! Shapes are vectors of [`Dim`]; a named dimension (`batch`, `seq`) flows
//! through elementwise ops, matmuls, transposes and reshapes. Small integer
//! tensors that describe shapes (`Shape → Gather → Concat → Reshape`) are
//! tracked as vectors of dims too, so dynamic-shape exports still get
//! shapes. With concrete bindings every dim becomes known, which is what the
//! memory planner needs. Only clear type errors are reported; an op whose
//! shape rule is not known here gets an unknown shape, never an error.

use std::collections::HashMap;

use crate::passes::Evaluator;
use crate::{DType, Dim, Error, Graph, Node, Result, Tensor, ValueInfo};

type Shape = Vec<Dim>;

/// What is known about one value while inferring.
#[derive(Clone, Debug, Default)]
struct Known {
    dtype: Option<DType>,
    shape: Option<Shape>,
    /// For small 1-D/0-D integer values: the elements, as dims.
    elems: Option<Vec<Dim>>,
    /// For small constant values: the tensor itself.
    value: Option<Tensor>,
}

const SAME_TYPE_OPS: &[&str] = &[
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Max",
    "Min",
    "Sum",
    "Mean",
    "Equal",
    "Less",
    "Greater",
    "LessOrEqual",
    "GreaterOrEqual",
    "And",
    "Or",
    "Xor",
    "MatMul",
    "Concat",
    "Mod",
    "BitShift",
    "PRelu",
];

const UNARY_SAME: &[&str] = &[
    "Abs",
    "Neg",
    "Exp",
    "Log",
    "Sqrt",
    "Reciprocal",
    "Sigmoid",
    "Tanh",
    "Relu",
    "LeakyRelu",
    "Elu",
    "Selu",
    "Celu",
    "HardSigmoid",
    "HardSwish",
    "Swish",
    "Softplus",
    "Softsign",
    "Erf",
    "Gelu",
    "Mish",
    "Sin",
    "Cos",
    "Tan",
    "Asin",
    "Acos",
    "Atan",
    "Sinh",
    "Cosh",
    "Asinh",
    "Acosh",
    "Atanh",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "Not",
    "IsNaN",
    "IsInf",
    "ThresholdedRelu",
    "Shrink",
    "Clip",
    "Softmax",
    "LogSoftmax",
    "Hardmax",
    "Identity",
    "Dropout",
    "Cast",
    "CastLike",
    "LayerNormalization",
    "BatchNormalization",
    "InstanceNormalization",
    "LRN",
    "CumSum",
    "CumProd",
    "MeanVarianceNormalization",
    "GroupNormalization",
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "BitwiseNot",
    "RMSNormalization",
    "RotaryEmbedding",
    "LpNormalization",
    "SwiGLU",
];

const BROADCAST_OPS: &[&str] = &[
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Max",
    "Min",
    "Sum",
    "Mean",
    "Equal",
    "Less",
    "Greater",
    "LessOrEqual",
    "GreaterOrEqual",
    "And",
    "Or",
    "Xor",
    "Mod",
    "BitShift",
    "BitwiseAnd",
    "BitwiseOr",
    "BitwiseXor",
    "PRelu",
    "Where",
];

/// Infers types and symbolic shapes and stores them in `graph.value_info`.
pub fn infer(graph: &mut Graph) -> Result<()> {
    let info = infer_with(graph, &HashMap::new(), None)?;
    for (k, v) in info {
        if !graph.initializers.contains_key(&k) && !graph.is_input(&k) {
            graph.value_info.insert(k, v);
        }
    }
    Ok(())
}

/// Infers every value's type and shape with symbolic dims bound to
/// `bindings`; `eval` (if given) computes small constant subexpressions.
pub fn infer_with(
    graph: &Graph,
    bindings: &HashMap<String, usize>,
    eval: Option<&Evaluator>,
) -> Result<HashMap<String, ValueInfo>> {
    let bind = |s: &Shape| -> Shape {
        s.iter()
            .map(|d| match d {
                Dim::Sym(n) => bindings.get(n).map(|&v| Dim::Known(v)).unwrap_or_else(|| d.clone()),
                _ => d.clone(),
            })
            .collect()
    };
    let mut known: HashMap<String, Known> = HashMap::new();
    for (k, t) in &graph.initializers {
        let small_int = t.numel() <= 64 && t.dtype().is_int();
        known.insert(
            k.clone(),
            Known {
                dtype: Some(t.dtype()),
                shape: Some(t.shape().iter().map(|&d| Dim::Known(d)).collect()),
                elems: if small_int && t.rank() <= 1 {
                    t.to_i64_vec().ok().map(|v| v.into_iter().map(|x| Dim::Known(x.max(-1) as usize)).collect())
                } else {
                    None
                },
                value: (t.numel() <= 64).then(|| t.clone()),
            },
        );
        // Negative constants (-1 in reshape shapes) cannot be dims.
        if let Some(k) = known.get_mut(k) {
            if t.dtype().is_int() && t.to_i64_vec().map(|v| v.iter().any(|&x| x < 0)).unwrap_or(false) {
                k.elems = None;
            }
        }
    }
    for i in &graph.inputs {
        known
            .insert(i.name.clone(), Known { dtype: i.dtype, shape: i.shape.as_ref().map(&bind), ..Default::default() });
    }
    for n in &graph.nodes {
        let ins: Vec<Option<&Known>> =
            n.inputs.iter().map(|s| if s.is_empty() { None } else { known.get(s) }).collect();
        let outs = infer_node(n, &ins)?;
        // Small constant subexpressions are evaluated outright.
        let mut evaluated: Option<Vec<Tensor>> = None;
        if let Some(ev) = eval {
            let all_const = !n.inputs.is_empty()
                && n.inputs.iter().zip(&ins).all(|(s, k)| s.is_empty() || k.is_some_and(|k| k.value.is_some()));
            if all_const && n.attrs.values().all(|a| !matches!(a, crate::Attr::Graph)) {
                let args: Vec<Option<Tensor>> = ins.iter().map(|k| k.and_then(|k| k.value.clone())).collect();
                if let Ok(o) = ev(graph, n, &args) {
                    if o.iter().all(|t| t.numel() <= 64) {
                        evaluated = Some(o);
                    }
                }
            }
            if evaluated.is_none() && n.op_type == "Shape" {
                // Shape of a fully known input is a constant.
                if let Some(v) = outs.first().and_then(|o| o.elems.as_ref()) {
                    if let Some(d) = v.iter().map(|d| d.known().map(|x| x as i64)).collect::<Option<Vec<_>>>() {
                        evaluated = Tensor::from_vec(&[d.len()], d).ok().map(|t| vec![t]);
                    }
                }
            }
        }
        for (i, (name, mut k)) in n.outputs.iter().zip(outs).enumerate() {
            if name.is_empty() {
                continue;
            }
            // What the file declared stands where no rule knows better, and
            // flows on to the values computed from it.
            if let Some(vi) = graph.value_info.get(name) {
                if k.shape.is_none() {
                    k.shape = vi.shape.as_ref().map(&bind);
                }
                if k.dtype.is_none() {
                    k.dtype = vi.dtype;
                }
            }
            if let Some(t) = evaluated.as_ref().and_then(|e| e.get(i)) {
                k.dtype = Some(t.dtype());
                k.shape = Some(t.shape().iter().map(|&d| Dim::Known(d)).collect());
                if t.dtype().is_int() && t.rank() <= 1 {
                    if let Ok(v) = t.to_i64_vec() {
                        k.elems =
                            v.iter().all(|&x| x >= 0).then(|| v.iter().map(|&x| Dim::Known(x as usize)).collect());
                    }
                }
                k.value = Some(t.clone());
            }
            known.insert(name.clone(), k);
        }
    }
    Ok(known
        .into_iter()
        .map(|(name, k)| {
            let vi = ValueInfo { name: name.clone(), dtype: k.dtype, shape: k.shape };
            (name, vi)
        })
        .collect())
}

fn dims_of(v: &[i64]) -> Vec<Dim> {
    v.iter().map(|&x| if x >= 0 { Dim::Known(x as usize) } else { Dim::Unknown }).collect()
}

fn broadcast2(a: &Shape, b: &Shape) -> Option<Shape> {
    let r = a.len().max(b.len());
    let mut out = Vec::with_capacity(r);
    for i in 0..r {
        let x = if i + a.len() >= r { &a[i + a.len() - r] } else { &Dim::Known(1) };
        let y = if i + b.len() >= r { &b[i + b.len() - r] } else { &Dim::Known(1) };
        out.push(match (x, y) {
            (Dim::Known(1), d) | (d, Dim::Known(1)) => d.clone(),
            (Dim::Known(p), Dim::Known(q)) if p == q => Dim::Known(*p),
            (Dim::Known(_), Dim::Known(_)) => return None,
            (Dim::Sym(p), Dim::Sym(q)) if p == q => Dim::Sym(p.clone()),
            (Dim::Known(k), _) | (_, Dim::Known(k)) => Dim::Known(*k),
            _ => Dim::Unknown,
        });
    }
    Some(out)
}

fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    (a >= 0 && (a as usize) < rank.max(1)).then_some(a as usize)
}

/// Integer attribute list or constant input `idx` (axes, pads, ...).
fn ints_attr_or_input(n: &Node, attr: &str, ins: &[Option<&Known>], idx: usize) -> Option<Vec<i64>> {
    if let Ok(Some(v)) = n.attr_ints(attr) {
        return Some(v);
    }
    ins.get(idx).copied().flatten()?.value.as_ref()?.to_i64_vec().ok()
}

fn out_dtype(n: &Node, ins: &[Option<&Known>]) -> Option<DType> {
    let first = ins.iter().flatten().find_map(|k| k.dtype);
    let input = |i: usize| ins.get(i).copied().flatten().and_then(|k| k.dtype);
    Some(match n.op_type.as_str() {
        "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or" | "Xor" | "Not" | "IsNaN"
        | "IsInf" => DType::Bool,
        "Cast" => DType::from_onnx(n.attr_int("to").ok()?? as i32).ok()?,
        "CastLike" => input(1)?,
        "Shape" | "Size" | "NonZero" | "ArgMax" | "ArgMin" => DType::I64,
        "Where" => input(1)?,
        "MatMulInteger" | "ConvInteger" => DType::I32,
        "DequantizeLinear" => input(1)?,
        "QuantizeLinear" => input(2).unwrap_or(DType::U8),
        "QLinearMatMul" | "QLinearConv" => input(7)?,
        "DynamicQuantizeLinear" => DType::U8,
        "Constant" => {
            return n
                .attrs
                .get("value")
                .and_then(|a| if let crate::Attr::Tensor(t) = a { Some(t.dtype()) } else { None })
        }
        "ConstantOfShape" => match n.attrs.get("value") {
            Some(crate::Attr::Tensor(t)) => t.dtype(),
            _ => DType::F32,
        },
        "EyeLike" | "RandomNormalLike" | "RandomUniformLike" => match n.attr_int("dtype").ok().flatten() {
            Some(d) => DType::from_onnx(d as i32).ok()?,
            None => first?,
        },
        _ => first?,
    })
}

/// ONNX Runtime's quantized contrib operators (QOperator models): the
/// float operator's shape, in the 8-bit type (QGemm: `y_zero_point`'s, or
/// f32 without it). None for other operators of the domain.
fn infer_quantized_contrib(n: &Node, ins: &[Option<&Known>]) -> Result<Option<Vec<Known>>> {
    let input = |i: usize| ins.get(i).copied().flatten();
    let channels_last = n.attr_int_or("channels_last", 0).unwrap_or(0) != 0;
    let (plain, data): (&str, Vec<usize>) = match n.op_type.as_str() {
        "QLinearAdd" => ("Add", vec![0, 3]),
        "QLinearMul" => ("Mul", vec![0, 3]),
        "QLinearSigmoid" | "QLinearLeakyRelu" | "QLinearSoftmax" => ("Identity", vec![0]),
        "QLinearGlobalAveragePool" if !channels_last => ("GlobalAveragePool", vec![0]),
        "QLinearAveragePool" if !channels_last => ("AveragePool", vec![0]),
        "QLinearConcat" => ("Concat", (2..n.inputs.len()).step_by(3).collect()),
        "QGemm" => {
            // 8-bit with y_zero_point; float without it (y_scale or not).
            let given = |i: usize| n.inputs.get(i).is_some_and(|s| !s.is_empty());
            let dtype = if given(8) { input(8).and_then(|k| k.dtype) } else { Some(DType::F32) };
            // (rows, columns) of A' or B'.
            let dims = |i: usize, trans: &str| -> Option<(Dim, Dim)> {
                let s = input(i)?.shape.clone()?;
                let t = n.attr_int_or(trans, 0).ok()? != 0;
                match s.as_slice() {
                    [r, c] if t => Some((c.clone(), r.clone())),
                    [r, c] => Some((r.clone(), c.clone())),
                    _ => None,
                }
            };
            let shape = dims(0, "transA").zip(dims(3, "transB")).map(|((m, _), (_, cols))| vec![m, cols]);
            return Ok(Some(vec![Known { dtype, shape, ..Default::default() }]));
        }
        _ => return Ok(None),
    };
    let mut p = n.clone();
    p.domain.clear();
    p.op_type = plain.into();
    p.inputs = data.iter().map(|&i| n.inputs.get(i).cloned().unwrap_or_default()).collect();
    p.attrs.remove("channels_last");
    let picked: Vec<Option<&Known>> = data.iter().map(|&i| input(i)).collect();
    let mut outs = infer_node(&p, &picked)?;
    outs.truncate(1);
    if let Some(o) = outs.first_mut() {
        o.dtype = picked.first().copied().flatten().and_then(|k| k.dtype);
        o.elems = None;
        o.value = None;
    }
    Ok(Some(outs))
}

fn infer_node(n: &Node, ins: &[Option<&Known>]) -> Result<Vec<Known>> {
    let nout = n.outputs.len();
    let mut outs = vec![Known::default(); nout];
    let onnx = n.domain.is_empty() || n.domain == "ai.onnx";
    let op = n.op_type.as_str();
    let fused_matmul = n.domain == "tessera" && op == "FusedMatMul";
    if n.domain == "tessera" && op == "FusedMatMulInteger" {
        // The dequantized product: f32 of MatMul's shape.
        let shape = |i: usize| ins.get(i).copied().flatten().and_then(|k| k.shape.clone());
        if let Some(o) = outs.first_mut() {
            o.dtype = Some(DType::F32);
            o.shape = shape(0).zip(shape(1)).and_then(|(a, b)| matmul_shape(&a, &b));
        }
        return Ok(outs);
    }
    if n.domain == "tessera" && op == crate::passes::fuse_mlp::FUSED_MLP {
        // The second product's output, its A being the first one's.
        let (first, second) = crate::passes::fuse_mlp::split_mlp(n);
        let hidden = infer_node(&first, &ins[..ins.len().min(3)])?;
        let mut rest: Vec<Option<&Known>> = vec![hidden.first()];
        rest.extend((3..6).map(|i| ins.get(i).copied().flatten()));
        return infer_node(&second, &rest[..second.inputs.len()]);
    }
    if n.domain == "tessera" && op == crate::passes::fuse_conv::FUSED_BATCH_NORM {
        // BatchNormalization's output: the activation keeps its shape and type.
        let mut plain = n.clone();
        plain.domain.clear();
        plain.op_type = "BatchNormalization".into();
        return infer_node(&plain, ins);
    }
    if n.domain == "tessera" && op == crate::passes::fuse_conv::FUSED_CONV {
        // Conv's output: the residual and activation keep its shape and type.
        let mut plain = n.clone();
        plain.domain.clear();
        plain.op_type = "Conv".into();
        plain.inputs.truncate(3);
        return infer_node(&plain, &ins[..ins.len().min(3)]);
    }
    if n.domain == "tessera" && op == "Attention" {
        // [B, S, H·d] in, the same out; a packed Q/K/V input is [B, S, 3·H·d].
        let packed = n.attr_int_or(crate::passes::merge_qkv::QKV_PACKED, 0).unwrap_or(0) != 0;
        if let Some(q) = ins.first().copied().flatten() {
            let shape = q.shape.clone().map(|mut s| {
                if let (true, Some(last)) = (packed, s.last_mut()) {
                    *last = match *last {
                        Dim::Known(c) if c % 3 == 0 => Dim::Known(c / 3),
                        _ => Dim::Unknown,
                    };
                }
                s
            });
            outs[0] = Known { dtype: q.dtype, shape, ..Default::default() };
        }
        return Ok(outs);
    }
    if n.domain == "com.microsoft" {
        return Ok(infer_quantized_contrib(n, ins)?.unwrap_or(outs));
    }
    if !onnx && !fused_matmul {
        return Ok(outs);
    }
    // Type checks for ops whose inputs must share one type.
    if onnx && (SAME_TYPE_OPS.contains(&op) || op == "Where") {
        let idx: Vec<usize> = if op == "Where" { vec![1, 2] } else { (0..ins.len()).collect() };
        let types: Vec<(usize, DType)> =
            idx.iter().filter_map(|&i| ins.get(i).copied().flatten().and_then(|k| k.dtype).map(|d| (i, d))).collect();
        if let Some(&(i0, d0)) = types.first() {
            if let Some(&(i1, d1)) = types.iter().find(|(_, d)| *d != d0) {
                return Err(Error::InvalidModel(format!(
                    "node '{}' ({op}): input {i0} '{}' is {d0} but input {i1} '{}' is {d1}; they must have the same type",
                    n.name, n.inputs[i0], n.inputs[i1]
                )));
            }
        }
    }
    let dtype = if fused_matmul { ins.first().copied().flatten().and_then(|k| k.dtype) } else { out_dtype(n, ins) };
    if let Some(o) = outs.first_mut() {
        o.dtype = dtype;
    }
    let shape = |i: usize| ins.get(i).copied().flatten().and_then(|k| k.shape.clone());
    let elems = |i: usize| ins.get(i).copied().flatten().and_then(|k| k.elems.clone());
    let s0 = shape(0);
    let set = |outs: &mut Vec<Known>, s: Option<Shape>| {
        if let Some(o) = outs.first_mut() {
            o.shape = s;
        }
    };
    match op {
        _ if fused_matmul || op == "MatMul" || op == "MatMulInteger" || op == "QLinearMatMul" => {
            let (a, b) = if op == "QLinearMatMul" { (shape(0), shape(3)) } else { (shape(0), shape(1)) };
            if let (Some(a), Some(b)) = (a, b) {
                set(&mut outs, matmul_shape(&a, &b));
            }
        }
        "Attention" if onnx => {
            // Y: [B, Hq, Sq, dv] from 4-D Q and V, [B, Sq, Hq·dv] from 3-D
            // ones; the cache outputs take K's and V's types, the scores
            // Q's (their shapes are left unknown).
            let heads = |a: &str| n.attr_int(a).ok().flatten().filter(|&h| h > 0).map(|h| h as usize);
            let y = match (shape(0).as_deref(), shape(2).as_deref()) {
                (Some([b, h, s, _]), Some([_, _, _, dv])) => Some(vec![b.clone(), h.clone(), s.clone(), dv.clone()]),
                (Some([b, s, _]), Some([_, _, cv])) => {
                    // Q, K and V packed side by side in one value (the
                    // merge_qkv pass): V is the last third.
                    let parts =
                        if n.attr_int_or(crate::passes::merge_qkv::QKV_PACKED, 0).unwrap_or(0) != 0 { 3 } else { 1 };
                    let width = match (heads("q_num_heads"), heads("kv_num_heads"), cv) {
                        (Some(hq), Some(hkv), Dim::Known(cv)) if cv % parts == 0 && (cv / parts) % hkv == 0 => {
                            Dim::Known(hq * (cv / parts / hkv))
                        }
                        _ => Dim::Unknown,
                    };
                    Some(vec![b.clone(), s.clone(), width])
                }
                _ => None,
            };
            set(&mut outs, y);
            let dtype_of = |i: usize| ins.get(i).copied().flatten().and_then(|k| k.dtype);
            for (o, from) in outs.iter_mut().zip([0, 1, 2, 0]).skip(1) {
                o.dtype = dtype_of(from);
            }
        }
        _ if BROADCAST_OPS.contains(&op) => {
            let mut acc: Option<Shape> = None;
            let mut all = true;
            for i in 0..ins.len() {
                match shape(i) {
                    Some(s) => {
                        acc = match acc {
                            None => Some(s),
                            Some(a) => match broadcast2(&a, &s) {
                                Some(b) => Some(b),
                                None => {
                                    return Err(Error::InvalidModel(format!(
                                        "node '{}' ({op}): input shapes {} cannot be broadcast together",
                                        n.name,
                                        (0..ins.len())
                                            .filter_map(shape)
                                            .map(|s| format!("{s:?}"))
                                            .collect::<Vec<_>>()
                                            .join(" and ")
                                    )))
                                }
                            },
                        }
                    }
                    None => all = false,
                }
            }
            if all {
                set(&mut outs, acc.clone());
            }
            // Arithmetic on shape vectors (e.g. seq * 2) stays tracked when known.
            if all && matches!(op, "Add" | "Sub" | "Mul" | "Div") {
                if let (Some(a), Some(b)) = (elems(0), elems(1)) {
                    let len = a.len().max(b.len());
                    let get = |v: &Vec<Dim>, i: usize| {
                        if v.len() == 1 {
                            v[0].clone()
                        } else {
                            v.get(i).cloned().unwrap_or(Dim::Unknown)
                        }
                    };
                    let e: Vec<Dim> = (0..len)
                        .map(|i| match (get(&a, i), get(&b, i)) {
                            (Dim::Known(x), Dim::Known(y)) => match op {
                                "Add" => Dim::Known(x + y),
                                "Sub" if x >= y => Dim::Known(x - y),
                                "Mul" => Dim::Known(x * y),
                                "Div" if y > 0 => Dim::Known(x / y),
                                _ => Dim::Unknown,
                            },
                            (d, Dim::Known(1)) if op == "Mul" || op == "Div" => d,
                            (Dim::Known(1), d) if op == "Mul" => d,
                            (d, Dim::Known(0)) if op == "Add" || op == "Sub" => d,
                            _ => Dim::Unknown,
                        })
                        .collect();
                    outs[0].elems = Some(e);
                }
            }
        }
        _ if UNARY_SAME.contains(&op) => {
            for o in outs.iter_mut() {
                o.shape = s0.clone();
            }
            if matches!(op, "Cast" | "Identity") {
                outs[0].elems = elems(0);
            }
            if op == "Dropout" && nout > 1 {
                outs[1].dtype = Some(DType::Bool);
            }
            if op == "DynamicQuantizeLinear" && nout == 3 {
                outs[1] = Known { dtype: Some(DType::F32), shape: Some(vec![]), ..Default::default() };
                outs[2] = Known { dtype: Some(DType::U8), shape: Some(vec![]), ..Default::default() };
            }
            if op == "LayerNormalization" && nout > 1 {
                // Mean and InvStdDev outputs: unknown here.
                for o in outs.iter_mut().skip(1) {
                    o.shape = None;
                }
            }
        }
        "Shape" => {
            if let Some(s) = s0 {
                let r = s.len() as i64;
                let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                let start = clamp(n.attr_int_or("start", 0)?);
                let end = clamp(n.attr_int_or("end", r)?);
                let e: Vec<Dim> = if start < end { s[start..end].to_vec() } else { vec![] };
                outs[0].shape = Some(vec![Dim::Known(e.len())]);
                outs[0].elems = Some(e);
            }
        }
        "Size" => set(&mut outs, Some(vec![])),
        "Range" => {
            // Integer bounds: ceil((limit - start) / delta) values, or the
            // limit itself counting from 0 in steps of 1 (the exporters'
            // position ids, `Range(0, seq, 1)` with `seq` from a Shape).
            let int = |i: usize| -> Option<i64> {
                let k = ins.get(i).copied().flatten()?;
                let v = k.value.as_ref().filter(|t| t.dtype().is_int() && t.numel() == 1)?.to_i64_vec().ok()?;
                v.first().copied()
            };
            let dim = |i: usize| elems(i).filter(|e| e.len() == 1).map(|e| e[0].clone());
            let len = match (int(0), int(2)) {
                (Some(start), Some(delta)) if delta != 0 => match (int(1), dim(1)) {
                    (Some(limit), _) => {
                        let span = limit.saturating_sub(start);
                        let n = if span.signum() * delta.signum() <= 0 {
                            0
                        } else {
                            (span.unsigned_abs()).div_ceil(delta.unsigned_abs())
                        };
                        usize::try_from(n).ok().map(Dim::Known)
                    }
                    (None, Some(limit)) if start == 0 && delta == 1 => Some(limit),
                    _ => None,
                },
                _ => None,
            };
            if let Some(len) = len {
                set(&mut outs, Some(vec![len]));
            }
        }
        "Gemm" => {
            if let (Some(a), Some(b)) = (shape(0), shape(1)) {
                if a.len() == 2 && b.len() == 2 {
                    let m = if n.attr_int_or("transA", 0)? != 0 { a[1].clone() } else { a[0].clone() };
                    let nn = if n.attr_int_or("transB", 0)? != 0 { b[0].clone() } else { b[1].clone() };
                    set(&mut outs, Some(vec![m, nn]));
                }
            }
        }
        "Transpose" => {
            if let Some(s) = s0 {
                let perm = n.attr_ints("perm")?.unwrap_or_else(|| (0..s.len() as i64).rev().collect());
                if perm.len() == s.len() {
                    let p: Option<Shape> = perm.iter().map(|&p| norm_axis(p, s.len()).map(|p| s[p].clone())).collect();
                    set(&mut outs, p);
                }
            }
        }
        "Reshape" => {
            if let (Some(s), Some(target)) = (s0.clone(), ins.get(1).copied().flatten()) {
                set(&mut outs, reshape_shape(n, &s, target)?);
            }
            outs[0].elems = elems(0);
        }
        "Flatten" => {
            if let Some(s) = s0 {
                let axis = n.attr_int_or("axis", 1)?;
                let a = if axis < 0 { axis + s.len() as i64 } else { axis };
                if (0..=s.len() as i64).contains(&a) {
                    let a = a as usize;
                    set(&mut outs, Some(vec![product(&s[..a]), product(&s[a..])]));
                }
            }
        }
        "Unsqueeze" => {
            if let (Some(s), Some(axes)) = (s0, ints_attr_or_input(n, "axes", ins, 1)) {
                let r = s.len() + axes.len();
                let mut axes: Vec<usize> = axes.iter().filter_map(|&a| norm_axis(a, r)).collect();
                axes.sort();
                let mut it = s.into_iter();
                let out: Shape = (0..r)
                    .map(|i| if axes.contains(&i) { Dim::Known(1) } else { it.next().unwrap_or(Dim::Unknown) })
                    .collect();
                set(&mut outs, Some(out));
            }
            outs[0].elems = elems(0);
        }
        "Squeeze" => {
            if let Some(s) = s0 {
                let out = match ints_attr_or_input(n, "axes", ins, 1) {
                    Some(axes) => {
                        let axes: Vec<usize> = axes.iter().filter_map(|&a| norm_axis(a, s.len())).collect();
                        Some(s.iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, d)| d.clone()).collect())
                    }
                    None if n.input(1).is_none() && s.iter().all(|d| d.known().is_some()) => {
                        Some(s.iter().filter(|d| **d != Dim::Known(1)).cloned().collect())
                    }
                    None => None,
                };
                set(&mut outs, out);
            }
            outs[0].elems = elems(0);
        }
        "Concat" => {
            let shapes: Option<Vec<Shape>> = (0..ins.len()).map(shape).collect();
            if let Some(shapes) = shapes {
                if let Some(first) = shapes.first() {
                    if let Some(axis) = norm_axis(n.attr_int_or("axis", 0)?, first.len()) {
                        let mut out = first.clone();
                        out[axis] = shapes.iter().map(|s| s.get(axis).cloned().unwrap_or(Dim::Unknown)).fold(
                            Dim::Known(0),
                            |a, b| match (a, b) {
                                (Dim::Known(x), Dim::Known(y)) => Dim::Known(x + y),
                                _ => Dim::Unknown,
                            },
                        );
                        for (i, d) in out.iter_mut().enumerate() {
                            if i != axis && matches!(d, Dim::Unknown) {
                                *d = shapes
                                    .iter()
                                    .find_map(|s| s.get(i).filter(|x| !matches!(x, Dim::Unknown)).cloned())
                                    .unwrap_or(Dim::Unknown);
                            }
                        }
                        set(&mut outs, Some(out));
                    }
                }
            }
            let es: Option<Vec<Vec<Dim>>> = (0..ins.len()).map(elems).collect();
            if let Some(es) = es {
                outs[0].elems = Some(es.concat());
            }
        }
        "Gather" => {
            if let (Some(d), Some(i)) = (s0, shape(1)) {
                if let Some(axis) = norm_axis(n.attr_int_or("axis", 0)?, d.len()) {
                    let mut out = d[..axis].to_vec();
                    out.extend(i.iter().cloned());
                    out.extend(d[axis + 1..].iter().cloned());
                    set(&mut outs, Some(out));
                }
            }
            // Gather of a shape vector with constant indices.
            if let (Some(e), Some(idx)) = (elems(0), ins.get(1).copied().flatten().and_then(|k| k.value.as_ref())) {
                if let Ok(iv) = idx.to_i64_vec() {
                    let picked: Option<Vec<Dim>> =
                        iv.iter().map(|&i| norm_axis(i, e.len()).map(|i| e[i].clone())).collect();
                    outs[0].elems = picked;
                }
            }
        }
        "Slice" => {
            if let Some(e) = elems(0) {
                // Slicing a shape vector with constant bounds.
                if let (Some(st), Some(en)) =
                    (ints_attr_or_input(n, "starts", ins, 1), ints_attr_or_input(n, "ends", ins, 2))
                {
                    if st.len() == 1 && en.len() == 1 && n.input(4).is_none() {
                        let r = e.len() as i64;
                        let c = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                        let (a, b) = (c(st[0]), c(en[0]));
                        outs[0].elems = Some(if a < b { e[a..b].to_vec() } else { vec![] });
                        outs[0].shape = Some(vec![Dim::Known(b.saturating_sub(a))]);
                    }
                }
            }
            if outs[0].shape.is_none() {
                if let Some(s) = s0 {
                    outs[0].shape = slice_shape(n, &s, ins).or_else(|| slice_to_dim(n, &s, ins, elems(2)));
                }
            }
        }
        "ConstantOfShape" => {
            if let Some(e) = elems(0) {
                set(&mut outs, Some(e));
            }
        }
        "Expand" => match (s0, elems(1), shape(1).as_deref()) {
            (Some(s), Some(e), _) => set(&mut outs, broadcast2(&s, &e)),
            (Some(s), None, Some([Dim::Known(r)])) => {
                // Target values unknown, their count known: the input's
                // axes other than 1 survive (the target may only repeat
                // or match them).
                let r = (*r).max(s.len());
                let lead = r - s.len();
                let out = (0..r)
                    .map(|i| match i.checked_sub(lead).map(|j| &s[j]) {
                        Some(Dim::Known(1)) | None => Dim::Unknown,
                        Some(d) => d.clone(),
                    })
                    .collect();
                set(&mut outs, Some(out));
            }
            _ => {}
        },
        "Constant" => {
            if let Some(crate::Attr::Tensor(t)) = n.attrs.get("value") {
                outs[0].shape = Some(t.shape().iter().map(|&d| Dim::Known(d)).collect());
                if t.numel() <= 64 {
                    outs[0].value = Some(t.clone());
                    if t.dtype().is_int() && t.rank() <= 1 {
                        outs[0].elems = t.to_i64_vec().ok().filter(|v| v.iter().all(|&x| x >= 0)).map(|v| dims_of(&v));
                    }
                }
            }
        }
        "Conv" | "MaxPool" | "AveragePool" | "ConvInteger" | "QLinearConv" | "LpPool" => {
            let w = match op {
                "Conv" | "ConvInteger" => shape(1),
                "QLinearConv" => shape(3),
                _ => None,
            };
            if let Some(s) = s0 {
                set(&mut outs, conv_shape(n, &s, w.as_ref())?);
            }
            if op == "MaxPool" && nout > 1 {
                outs[1].shape = outs[0].shape.clone();
                outs[1].dtype = Some(DType::I64);
            }
        }
        "GlobalAveragePool" | "GlobalMaxPool" | "GlobalLpPool" => {
            if let Some(s) = s0 {
                let out: Shape =
                    s.iter().enumerate().map(|(i, d)| if i < 2 { d.clone() } else { Dim::Known(1) }).collect();
                set(&mut outs, Some(out));
            }
        }
        _ if op.starts_with("Reduce") || op == "ArgMax" || op == "ArgMin" => {
            if let Some(s) = s0 {
                let keep = n.attr_int_or("keepdims", 1)? != 0;
                let axes = if op.starts_with("Arg") {
                    Some(vec![n.attr_int_or("axis", 0)?])
                } else {
                    ints_attr_or_input(n, "axes", ins, 1)
                };
                let noop = n.attr_int_or("noop_with_empty_axes", 0)? != 0;
                let axes: Option<Vec<usize>> = match axes {
                    Some(a) if !a.is_empty() => a.iter().map(|&x| norm_axis(x, s.len())).collect(),
                    Some(_) | None if n.input(1).is_none() || !op.starts_with("Reduce") => {
                        if noop {
                            Some(vec![])
                        } else {
                            Some((0..s.len()).collect())
                        }
                    }
                    _ => None,
                };
                if let Some(axes) = axes {
                    let out: Shape = s
                        .iter()
                        .enumerate()
                        .filter_map(
                            |(i, d)| {
                                if axes.contains(&i) {
                                    keep.then_some(Dim::Known(1))
                                } else {
                                    Some(d.clone())
                                }
                            },
                        )
                        .collect();
                    set(&mut outs, Some(out));
                }
            }
        }
        _ => {}
    }
    Ok(outs)
}

fn product(ds: &[Dim]) -> Dim {
    ds.iter().fold(Dim::Known(1), |a, b| match (a, b) {
        (Dim::Known(x), Dim::Known(y)) => Dim::Known(x * y),
        (Dim::Known(1), d) => d.clone(),
        (d, Dim::Known(1)) => d,
        _ => Dim::Unknown,
    })
}

fn matmul_shape(a: &Shape, b: &Shape) -> Option<Shape> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let a2: Shape = if a.len() == 1 { vec![Dim::Known(1), a[0].clone()] } else { a.clone() };
    let b2: Shape = if b.len() == 1 { vec![b[0].clone(), Dim::Known(1)] } else { b.clone() };
    let batch = broadcast2(&a2[..a2.len() - 2].to_vec(), &b2[..b2.len() - 2].to_vec())?;
    let mut out = batch;
    if a.len() > 1 {
        out.push(a2[a2.len() - 2].clone());
    }
    if b.len() > 1 {
        out.push(b2[b2.len() - 1].clone());
    }
    Some(out)
}

fn reshape_shape(n: &Node, s: &Shape, target: &Known) -> Result<Option<Shape>> {
    let allowzero = n.attr_int_or("allowzero", 0)? != 0;
    let raw: Vec<Option<i64>> = if let Some(t) = &target.value {
        t.to_i64_vec()?.into_iter().map(Some).collect()
    } else if let Some(e) = &target.elems {
        e.iter().map(|d| d.known().map(|x| x as i64)).collect()
    } else {
        return Ok(None);
    };
    let sym: Vec<Dim> = target.elems.clone().unwrap_or_default();
    let mut out: Shape = Vec::with_capacity(raw.len());
    let mut infer_at = None;
    for (i, r) in raw.iter().enumerate() {
        out.push(match r {
            Some(0) if !allowzero => s.get(i).cloned().unwrap_or(Dim::Unknown),
            Some(-1) => {
                infer_at = Some(i);
                Dim::Unknown
            }
            Some(v) if *v >= 0 => Dim::Known(*v as usize),
            Some(_) => return Ok(None),
            None => sym.get(i).cloned().unwrap_or(Dim::Unknown),
        });
    }
    if let Some(i) = infer_at {
        let total = product(s);
        let rest =
            product(&out.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, d)| d.clone()).collect::<Vec<_>>());
        out[i] = match (total, rest) {
            (Dim::Known(t), Dim::Known(r)) if r > 0 => Dim::Known(t / r),
            _ => Dim::Unknown,
        };
    }
    Ok(Some(out))
}

fn slice_shape(n: &Node, s: &Shape, ins: &[Option<&Known>]) -> Option<Shape> {
    let starts = ints_attr_or_input(n, "starts", ins, 1)?;
    let ends = ints_attr_or_input(n, "ends", ins, 2)?;
    let axes = ints_attr_or_input(n, "axes", ins, 3).unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = if n.input(4).is_some() { ints_attr_or_input(n, "steps", ins, 4)? } else { vec![1; starts.len()] };
    let mut out = s.clone();
    for (((&st, &en), &ax), &step) in starts.iter().zip(&ends).zip(&axes).zip(&steps) {
        let a = norm_axis(ax, s.len())?;
        out[a] = match &s[a] {
            Dim::Known(d) => {
                let d = *d as i64;
                if step == 0 {
                    return None;
                }
                let (lo, hi) = if step > 0 { (0, d) } else { (-1, d - 1) };
                let c = |v: i64| (if v < 0 { v + d } else { v }).clamp(lo, hi);
                let (b, e) = (c(st), c(en));
                let len = if step > 0 {
                    (e - b + step - 1).div_euclid(step)
                } else {
                    (b - e + (-step) - 1).div_euclid(-step)
                };
                Dim::Known(len.max(0) as usize)
            }
            other if st == 0 && en >= i32::MAX as i64 && step == 1 => other.clone(),
            _ => Dim::Unknown,
        };
    }
    Some(out)
}

/// `Slice(x, [0], [end], [axis])` (step 1) with a symbolic `end`, a dim
/// read from a Shape: how exporters cut a max-length buffer (position or
/// token-type ids) to the sequence length. The axis becomes `end`, on the
/// assumption that it does not exceed the axis; with dims bound, `end` is a
/// constant and [`slice_shape`] clamps exactly.
fn slice_to_dim(n: &Node, s: &Shape, ins: &[Option<&Known>], ends: Option<Vec<Dim>>) -> Option<Shape> {
    let [end] = &ends?[..] else { return None };
    let starts = ints_attr_or_input(n, "starts", ins, 1)?;
    let axes = if n.input(3).is_some() { ints_attr_or_input(n, "axes", ins, 3)? } else { vec![0] };
    let unit_step = n.input(4).is_none() || ints_attr_or_input(n, "steps", ins, 4)? == [1];
    if starts != [0] || axes.len() != 1 || !unit_step {
        return None;
    }
    let a = norm_axis(axes[0], s.len())?;
    let mut out = s.clone();
    out[a] = match (end, &s[a]) {
        (Dim::Sym(_), _) => end.clone(),
        (Dim::Known(e), Dim::Known(d)) => Dim::Known(*e.min(d)),
        _ => Dim::Unknown,
    };
    Some(out)
}

fn conv_shape(n: &Node, s: &Shape, w: Option<&Shape>) -> Result<Option<Shape>> {
    if s.len() < 3 {
        return Ok(None);
    }
    let sp = s.len() - 2;
    let kernel: Vec<i64> = match n.attr_ints("kernel_shape")? {
        Some(k) => k,
        None => match w {
            Some(w) if w.len() == s.len() => match w[2..].iter().map(|d| d.known().map(|x| x as i64)).collect() {
                Some(k) => k,
                None => return Ok(None),
            },
            _ => return Ok(None),
        },
    };
    if kernel.len() != sp {
        return Ok(None);
    }
    let strides = n.attr_ints("strides")?.unwrap_or(vec![1; sp]);
    let dil = n.attr_ints("dilations")?.unwrap_or(vec![1; sp]);
    let pads = n.attr_ints("pads")?.unwrap_or(vec![0; 2 * sp]);
    let auto_pad = n.attr_string("auto_pad")?.unwrap_or_else(|| "NOTSET".into());
    let ceil = n.attr_int_or("ceil_mode", 0)? != 0;
    if strides.len() != sp || dil.len() != sp || pads.len() != 2 * sp {
        return Ok(None);
    }
    let mut out = vec![s[0].clone()];
    out.push(match (n.op_type.as_str(), w) {
        ("Conv" | "ConvInteger" | "QLinearConv", Some(w)) => w[0].clone(),
        ("Conv" | "ConvInteger" | "QLinearConv", None) => Dim::Unknown,
        _ => s[1].clone(),
    });
    for i in 0..sp {
        let Some(x) = s[i + 2].known() else {
            out.push(Dim::Unknown);
            continue;
        };
        let (x, k, st, d) = (x as i64, kernel[i], strides[i].max(1), dil[i].max(1));
        let ek = d * (k - 1) + 1;
        let o = match auto_pad.as_str() {
            "SAME_UPPER" | "SAME_LOWER" => (x + st - 1) / st,
            "VALID" => (x - ek) / st + 1,
            _ => {
                let num = x + pads[i] + pads[i + sp] - ek;
                if ceil {
                    // A last window that would start in the end padding is
                    // dropped (ONNX Runtime, PyTorch).
                    let o = (num + st - 1).div_euclid(st) + 1;
                    if (o - 1) * st >= x + pads[i] {
                        o - 1
                    } else {
                        o
                    }
                } else {
                    num.div_euclid(st) + 1
                }
            }
        };
        out.push(if o >= 0 { Dim::Known(o as usize) } else { Dim::Unknown });
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Attr;

    fn vi(n: &str, dt: DType, s: Vec<Dim>) -> ValueInfo {
        ValueInfo { name: n.into(), dtype: Some(dt), shape: Some(s) }
    }
    fn sym(s: &str) -> Dim {
        Dim::Sym(s.into())
    }

    #[test]
    fn symbolic_dims_flow_through_a_dynamic_reshape() {
        // y = Reshape(x, Concat(Gather(Shape(x), 0), Gather(Shape(x), 1), [4, 8]))
        let mut g = Graph {
            nodes: vec![
                Node::new("Shape", "s", &["x"], &["s"]),
                Node::new("Gather", "g0", &["s", "i0"], &["b"]),
                Node::new("Gather", "g1", &["s", "i1"], &["q"]),
                Node::new("Unsqueeze", "u0", &["b", "ax"], &["bu"]),
                Node::new("Unsqueeze", "u1", &["q", "ax"], &["qu"]),
                Node::new("Concat", "c", &["bu", "qu", "tail"], &["shape"]).with_attr("axis", Attr::Int(0)),
                Node::new("Reshape", "r", &["x", "shape"], &["r"]),
                Node::new("Transpose", "t", &["r"], &["y"]).with_attr("perm", Attr::Ints(vec![0, 2, 1, 3])),
                Node::new("MatMul", "mm", &["y", "w"], &["z"]),
            ],
            inputs: vec![vi("x", DType::F32, vec![sym("batch"), sym("seq"), Dim::Known(32)])],
            outputs: vec![vi("z", DType::F32, vec![])],
            ..Default::default()
        };
        g.initializers.insert("i0".into(), Tensor::scalar(0i64));
        g.initializers.insert("i1".into(), Tensor::scalar(1i64));
        g.initializers.insert("ax".into(), Tensor::from_vec(&[1], vec![0i64]).unwrap());
        g.initializers.insert("tail".into(), Tensor::from_vec(&[2], vec![4i64, 8]).unwrap());
        g.initializers.insert("w".into(), Tensor::zeros(DType::F32, &[8, 5]).unwrap());
        infer(&mut g).unwrap();
        assert_eq!(g.value_info["y"].shape, Some(vec![sym("batch"), Dim::Known(4), sym("seq"), Dim::Known(8)]));
        assert_eq!(g.value_info["z"].shape, Some(vec![sym("batch"), Dim::Known(4), sym("seq"), Dim::Known(5)]));
        let bound =
            infer_with(&g, &[("batch".to_string(), 2), ("seq".to_string(), 7)].into_iter().collect(), None).unwrap();
        assert_eq!(bound["z"].concrete_shape(), Some(vec![2, 4, 7, 5]));
    }

    #[test]
    fn quantized_contrib_ops_take_the_float_ops_shapes() {
        let k = |d: usize| Dim::Known(d);
        let ms = |mut n: Node| {
            n.domain = "com.microsoft".into();
            n
        };
        let mut g = Graph {
            nodes: vec![
                ms(Node::new("QLinearAdd", "add", &["x", "s", "z", "row", "s", "z", "s", "z"], &["sum"])),
                ms(Node::new("QLinearGlobalAveragePool", "gap", &["sum", "s", "z", "s", "z"], &["gap"])),
                ms(Node::new("QLinearGlobalAveragePool", "gapl", &["sum", "s", "z", "s", "z"], &["gapl"])
                    .with_attr("channels_last", Attr::Int(1))),
                ms(Node::new("QLinearConcat", "cat", &["s", "z", "x", "s", "z", "x", "s", "z"], &["cat"])
                    .with_attr("axis", Attr::Int(1))),
                ms(Node::new("QGemm", "gemm", &["a", "s", "z", "b", "s", "z"], &["f"])
                    .with_attr("transB", Attr::Int(1))),
                ms(Node::new("QGemm", "gemmq", &["a", "s", "z", "b", "s", "z", "", "s", "zs"], &["q"])
                    .with_attr("transB", Attr::Int(1))),
            ],
            inputs: vec![
                vi("x", DType::U8, vec![sym("n"), k(8), k(5), k(5)]),
                vi("row", DType::U8, vec![k(8), k(1), k(1)]),
                vi("a", DType::U8, vec![sym("n"), k(16)]),
            ],
            outputs: vec![vi("gap", DType::U8, vec![])],
            ..Default::default()
        };
        g.initializers.insert("s".into(), Tensor::scalar(0.1f32));
        g.initializers.insert("z".into(), Tensor::scalar(128u8));
        g.initializers.insert("zs".into(), Tensor::scalar(0i8));
        g.initializers.insert("b".into(), Tensor::zeros(DType::I8, &[10, 16]).unwrap());
        infer(&mut g).unwrap();
        let info = |v: &str| (g.value_info[v].dtype, g.value_info[v].shape.clone());
        assert_eq!(info("sum"), (Some(DType::U8), Some(vec![sym("n"), k(8), k(5), k(5)])));
        assert_eq!(info("gap"), (Some(DType::U8), Some(vec![sym("n"), k(8), k(1), k(1)])));
        // Channels last is left unknown rather than guessed.
        assert_eq!(info("gapl").1, None);
        assert_eq!(info("cat"), (Some(DType::U8), Some(vec![sym("n"), k(16), k(5), k(5)])));
        assert_eq!(info("f"), (Some(DType::F32), Some(vec![sym("n"), k(10)])));
        assert_eq!(info("q"), (Some(DType::I8), Some(vec![sym("n"), k(10)])));
    }

    #[test]
    fn range_lengths_known_and_symbolic() {
        // Position ids: Range(0, Gather(Shape(x), 1), 1) has `seq` values,
        // and the embedding rows gathered with them keep that length.
        let mut g = Graph {
            nodes: vec![
                Node::new("Shape", "s", &["x"], &["s"]),
                Node::new("Gather", "g", &["s", "one"], &["seq"]),
                Node::new("Range", "r", &["zero", "seq", "one"], &["pos"]),
                Node::new("Gather", "e", &["table", "pos"], &["emb"]),
                Node::new("Add", "a", &["x", "emb"], &["y"]),
                Node::new("Range", "down", &["ten", "zero", "minus3"], &["down"]),
                Node::new("Range", "empty", &["ten", "zero", "one"], &["empty"]),
            ],
            inputs: vec![vi("x", DType::F32, vec![sym("batch"), sym("seq"), Dim::Known(8)])],
            outputs: vec![vi("y", DType::F32, vec![])],
            ..Default::default()
        };
        for (name, v) in [("zero", 0i64), ("one", 1), ("ten", 10), ("minus3", -3)] {
            g.initializers.insert(name.into(), Tensor::scalar(v));
        }
        g.initializers.insert("table".into(), Tensor::zeros(DType::F32, &[64, 8]).unwrap());
        infer(&mut g).unwrap();
        assert_eq!(g.value_info["pos"].shape, Some(vec![sym("seq")]));
        assert_eq!(g.value_info["y"].shape, Some(vec![sym("batch"), sym("seq"), Dim::Known(8)]));
        // 10, 7, 4, 1: four values; counting up from 10 to 0: none.
        assert_eq!(g.value_info["down"].shape, Some(vec![Dim::Known(4)]));
        assert_eq!(g.value_info["empty"].shape, Some(vec![Dim::Known(0)]));
    }

    #[test]
    fn attention_and_rotary_shapes() {
        // RotaryEmbedding keeps its input's shape; Attention's Y takes Q's
        // leading axes and V's head size (3-D: times the query heads).
        let k = |d: usize| Dim::Known(d);
        let mut g = Graph {
            nodes: vec![
                Node::new("RotaryEmbedding", "r", &["q3", "cos", "sin", "pos"], &["qr"]),
                Node::new("Attention", "a3", &["qr", "k3", "v3"], &["y3", "present_k"])
                    .with_attr("q_num_heads", Attr::Int(8))
                    .with_attr("kv_num_heads", Attr::Int(2)),
                Node::new("Attention", "a4", &["q4", "k4", "v4"], &["y4"]),
                // Q, K and V packed in one [b, s, 3 · 4 · 16] value.
                Node::new("Attention", "ap", &["qkv", "qkv", "qkv"], &["yp"])
                    .with_attr("q_num_heads", Attr::Int(4))
                    .with_attr("kv_num_heads", Attr::Int(4))
                    .with_attr(crate::passes::merge_qkv::QKV_PACKED, Attr::Int(1)),
            ],
            inputs: vec![
                vi("q3", DType::F32, vec![sym("b"), sym("s"), k(8 * 16)]),
                vi("k3", DType::F32, vec![sym("b"), k(5), k(2 * 16)]),
                vi("v3", DType::F32, vec![sym("b"), k(5), k(2 * 24)]),
                vi("q4", DType::F16, vec![k(2), k(4), sym("s"), k(16)]),
                vi("k4", DType::F16, vec![k(2), k(1), k(7), k(16)]),
                vi("v4", DType::F16, vec![k(2), k(1), k(7), k(24)]),
                vi("qkv", DType::F32, vec![sym("b"), sym("s"), k(3 * 4 * 16)]),
            ],
            outputs: vec![vi("y3", DType::F32, vec![]), vi("y4", DType::F16, vec![])],
            ..Default::default()
        };
        infer(&mut g).unwrap();
        assert_eq!(g.value_info["qr"].shape, Some(vec![sym("b"), sym("s"), k(128)]));
        assert_eq!(g.value_info["y3"].shape, Some(vec![sym("b"), sym("s"), k(8 * 24)]));
        assert_eq!(g.value_info["present_k"].dtype, Some(DType::F32));
        assert_eq!(g.value_info["present_k"].shape, None);
        assert_eq!(g.value_info["y4"].shape, Some(vec![k(2), k(4), sym("s"), k(24)]));
        assert_eq!(g.value_info["y4"].dtype, Some(DType::F16));
        assert_eq!(g.value_info["yp"].shape, Some(vec![sym("b"), sym("s"), k(4 * 16)]));
    }

    #[test]
    fn declared_shapes_stand_where_no_rule_applies() {
        // An op without a rule here (a custom domain) whose output the file
        // declares: the declaration is kept and flows on through Relu.
        let mut foo = Node::new("Foo", "foo", &["x"], &["y"]);
        foo.domain = "com.example".into();
        let mut g = Graph {
            nodes: vec![foo, Node::new("Relu", "r", &["y"], &["z"])],
            inputs: vec![vi("x", DType::F32, vec![sym("b"), Dim::Known(4)])],
            outputs: vec![vi("z", DType::F32, vec![])],
            ..Default::default()
        };
        g.value_info.insert("y".into(), vi("y", DType::F32, vec![sym("b"), Dim::Known(4)]));
        infer(&mut g).unwrap();
        assert_eq!(g.value_info["y"].shape, Some(vec![sym("b"), Dim::Known(4)]));
        assert_eq!(g.value_info["z"].shape, Some(vec![sym("b"), Dim::Known(4)]));
        assert_eq!(g.value_info["z"].dtype, Some(DType::F32));
    }

    #[test]
    fn slice_to_a_symbolic_length_and_expand_to_unknown_values() {
        // ids = Expand(Slice(buffer[1, 64], [0], [seq], [1]), t): the
        // exporters' token-type ids. The slice is [1, seq]; `t`'s values are
        // unknown, so the expanded leading axis is too.
        let mut g = Graph {
            nodes: vec![
                Node::new("Shape", "s", &["x"], &["s"]),
                Node::new("Gather", "g", &["s", "one"], &["seq"]),
                Node::new("Unsqueeze", "u", &["seq", "axis0"], &["end"]),
                Node::new("Slice", "sl", &["buffer", "start0", "end", "axis1"], &["ids"]),
                Node::new("Expand", "e", &["ids", "t"], &["wide"]),
            ],
            inputs: vec![
                vi("x", DType::F32, vec![sym("batch"), sym("seq"), Dim::Known(8)]),
                vi("t", DType::I64, vec![Dim::Known(2)]),
            ],
            outputs: vec![vi("wide", DType::I64, vec![])],
            ..Default::default()
        };
        g.initializers.insert("one".into(), Tensor::scalar(1i64));
        g.initializers.insert("axis0".into(), Tensor::from_vec(&[1], vec![0i64]).unwrap());
        g.initializers.insert("start0".into(), Tensor::from_vec(&[1], vec![0i64]).unwrap());
        g.initializers.insert("axis1".into(), Tensor::from_vec(&[1], vec![1i64]).unwrap());
        g.initializers.insert("buffer".into(), Tensor::zeros(DType::I64, &[1, 64]).unwrap());
        infer(&mut g).unwrap();
        assert_eq!(g.value_info["ids"].shape, Some(vec![Dim::Known(1), sym("seq")]));
        assert_eq!(g.value_info["wide"].shape, Some(vec![Dim::Unknown, sym("seq")]));
        // Bound, the end is a constant and the slice is exact.
        let ev = |_: &Graph, _: &Node, _: &[Option<Tensor>]| -> Result<Vec<Tensor>> { Err(Error::Other("no".into())) };
        let bound =
            infer_with(&g, &[("seq".to_string(), 7), ("batch".to_string(), 1)].into_iter().collect(), Some(&ev))
                .unwrap();
        assert_eq!(bound["ids"].concrete_shape(), Some(vec![1, 7]));
    }

    #[test]
    fn dtype_mismatch_is_an_error() {
        let mut g = Graph {
            nodes: vec![Node::new("Add", "add", &["a", "b"], &["c"])],
            inputs: vec![vi("a", DType::F32, vec![Dim::Known(2)]), vi("b", DType::I64, vec![Dim::Known(2)])],
            outputs: vec![vi("c", DType::F32, vec![])],
            ..Default::default()
        };
        let e = infer(&mut g).unwrap_err().to_string();
        assert!(e.contains("same type") && e.contains("add"), "{e}");
    }

    #[test]
    fn conv_and_pool_shapes() {
        let mut g = Graph {
            nodes: vec![
                Node::new("Conv", "c", &["x", "w"], &["y"])
                    .with_attr("strides", Attr::Ints(vec![2, 2]))
                    .with_attr("pads", Attr::Ints(vec![3, 3, 3, 3])),
                Node::new("MaxPool", "p", &["y"], &["z"])
                    .with_attr("kernel_shape", Attr::Ints(vec![3, 3]))
                    .with_attr("strides", Attr::Ints(vec![2, 2]))
                    .with_attr("ceil_mode", Attr::Int(1)),
            ],
            inputs: vec![vi("x", DType::F32, vec![Dim::Known(1), Dim::Known(3), Dim::Known(224), Dim::Known(224)])],
            outputs: vec![vi("z", DType::F32, vec![])],
            ..Default::default()
        };
        g.initializers.insert("w".into(), Tensor::zeros(DType::F32, &[64, 3, 7, 7]).unwrap());
        infer(&mut g).unwrap();
        assert_eq!(g.value_info["y"].concrete_shape(), Some(vec![1, 64, 112, 112]));
        assert_eq!(g.value_info["z"].concrete_shape(), Some(vec![1, 64, 56, 56]));
    }
}
