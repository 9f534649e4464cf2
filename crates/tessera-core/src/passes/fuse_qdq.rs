//! Products of QDQ models. Static quantization (ONNX Runtime's
//! `quantize_static` in its default QDQ format, and other exporters) writes
//! an int8 product as float ops around quantized values:
//!
//! ```text
//! xq = QuantizeLinear(x, sx, zx)            (per tensor)
//! MatMul(DequantizeLinear(xq, sx, zx),
//!        DequantizeLinear(wq, sw, zw))      (wq constant 8-bit [K, N];
//!                                            sw, zw per tensor or per column)
//! ```
//!
//! Each output is `sx * sw[j] * sum_k (xq - zx)(wq - zw[j])`, so the pair
//! becomes `tessera:FusedMatMulInteger(xq, wq, zx, zw, sx * sw)`: the integer
//! product runs on the int8 kernels (tiles where the machine has them) and
//! is dequantized in its epilogue, which also takes a following row-bias
//! `Add` here and an activation or residual later (`fuse_epilogues`). The
//! dequantized operands are never materialized; the integer sum is exact,
//! so the result differs from the float graph's only by that graph's own
//! fp32 rounding.
//!
//! The weight's `DequantizeLinear` must survive constant folding until this
//! pass has run: [`keeps_quantized_weight`] tells the folder which ones.
//!
//! A product whose output is quantized for its consumers and dequantized
//! again (`QuantizeLinear -> DequantizeLinear`, one scale and zero point)
//! takes that round trip into its epilogue ([`fuse_requantized_outputs`]),
//! and the bias `Add` after it too: the grid step comes before the bias, as
//! in the graph. The same f32 operations as the two operators, so the same
//! values, without the 8-bit copy and the two passes over memory.

use super::pattern::{is_onnx, replace_with_fused, Index};
use crate::{Attr, DType, Graph, Node, Tensor};

use super::fuse_matmul::{following_bias, place_integer_product, DOMAIN, FUSED_MATMUL_INTEGER};

/// Attributes of a `tessera:FusedMatMulInteger` whose dequantized output
/// makes a round trip through an 8-bit grid before its bias (see
/// `Requantize` in the kernels): the grid's scale (float), zero point (int)
/// and whether it is int8 (int, 0 or 1; uint8 when absent).
pub const REQUANTIZE_SCALE: &str = "requantize_scale";
pub const REQUANTIZE_ZERO_POINT: &str = "requantize_zero_point";
pub const REQUANTIZE_SIGNED: &str = "requantize_signed";

/// Whether constant folding should leave `n` alone for [`fuse_qdq_matmul`]:
/// a DequantizeLinear of a constant 8-bit tensor that is the weight of a
/// MatMul whose other operand is dequantized too (the pattern the pass
/// matches). Weights of other products (weight-only quantization) fold as
/// before.
pub fn keeps_quantized_weight(g: &Graph, n: &Node) -> bool {
    if n.op_type != "DequantizeLinear" || !is_onnx(n) {
        return false;
    }
    let (Some(w), Some(out)) = (n.input(0).and_then(|w| g.initializers.get(w)), n.outputs.first()) else {
        return false;
    };
    let dequantized = |v: &str| {
        g.nodes
            .iter()
            .any(|p| p.op_type == "DequantizeLinear" && is_onnx(p) && p.outputs.first().is_some_and(|o| o == v))
    };
    let eight_bit = matches!(w.dtype(), DType::I8 | DType::U8);
    g.nodes.iter().any(|m| {
        let Some(x) = m.input(0).filter(|_| is_onnx(m)) else { return false };
        match m.op_type.as_str() {
            "MatMul" => eight_bit && m.inputs.len() == 2 && &m.inputs[1] == out && dequantized(x),
            // A convolution's weight, or its int32 bias.
            "Conv" => {
                let slot = m.inputs.iter().position(|i| i == out);
                let fits = match slot {
                    Some(1) => eight_bit,
                    Some(2) => w.dtype() == DType::I32,
                    _ => false,
                };
                fits && dequantized(x)
            }
            _ => false,
        }
    })
}

/// Longest sum of 8-bit products (each at most 255 * 255 in magnitude once
/// the zero points are taken off) that an i32 holds exactly.
const MAX_EXACT_K: usize = i32::MAX as usize / (255 * 255);

/// A DequantizeLinear's operands, if it is the plain per-tensor or
/// per-axis form with an f32 scale: (quantized, scale, zero point).
fn dequantize_operands<'g>(g: &'g Graph, n: &'g Node) -> Option<(&'g str, &'g Tensor, Option<&'g str>)> {
    if n.op_type != "DequantizeLinear" || !is_onnx(n) || !(2..=3).contains(&n.inputs.len()) {
        return None;
    }
    // Blocked scales (opset 21) and other output types are not a scale
    // per tensor or per column.
    if n.attr_int("block_size").ok()?.unwrap_or(0) != 0 || !matches!(n.attr_int("output_dtype").ok()?, None | Some(1)) {
        return None;
    }
    let scale = g.initializers.get(n.input(1)?)?;
    if scale.dtype() != DType::F32 {
        return None;
    }
    Some((n.input(0)?, scale, n.input(2)))
}

/// The f32 scale values of a constant, if it is one value or `n` of them.
fn scale_values(t: &Tensor, n: usize) -> Option<Vec<f32>> {
    let v = t.as_slice::<f32>().ok()?;
    (v.len() == 1 || (v.len() == n && t.rank() == 1)).then(|| v.to_vec())
}

/// A per-tensor QuantizeLinear or DequantizeLinear's constant grid:
/// (scale, zero point, int8?), the zero point 0 of uint8 when absent.
fn grid_of(g: &Graph, n: &Node) -> Option<(f32, i32, bool)> {
    if !is_onnx(n) || !(2..=3).contains(&n.inputs.len()) {
        return None;
    }
    if n.attr_int("block_size").ok()?.unwrap_or(0) != 0 {
        return None;
    }
    let out_type = n.attr_int("output_dtype").ok()?;
    match n.op_type.as_str() {
        // Dequantized into f32 (opset 25 may name another float type).
        "DequantizeLinear" if matches!(out_type, None | Some(1)) => {}
        // Quantized in the default f32 arithmetic (opset 25's `precision`
        // may name another).
        "QuantizeLinear" if n.attr_int("precision").ok()?.unwrap_or(0) == 0 => {}
        _ => return None,
    }
    let scale = g.initializers.get(n.input(1)?)?;
    let &[scale] = scale.as_slice::<f32>().ok()? else { return None };
    let (zero, signed) = match n.input(2) {
        None => match (n.op_type.as_str(), out_type) {
            // QuantizeLinear's default type; DequantizeLinear's input type.
            ("QuantizeLinear", None | Some(0 | 2)) => (0, false),
            ("QuantizeLinear", Some(3)) => (0, true),
            ("DequantizeLinear", _) => match g.dtype_of(n.input(0)?)? {
                DType::U8 => (0, false),
                DType::I8 => (0, true),
                _ => return None,
            },
            _ => return None,
        },
        Some(z) => {
            let z = g.initializers.get(z)?;
            let (zero, signed) = match (z.numel(), z.dtype()) {
                (1, DType::U8) => (z.bytes()[0] as i32, false),
                (1, DType::I8) => (z.bytes()[0] as i8 as i32, true),
                _ => return None,
            };
            // A QuantizeLinear's output type must be its zero point's.
            let code = if signed { 3 } else { 2 };
            if n.op_type == "QuantizeLinear" && !matches!(out_type, None | Some(0)) && out_type != Some(code) {
                return None;
            }
            (zero, signed)
        }
    };
    Some((scale, zero, signed))
}

/// `FusedMatMulInteger -> QuantizeLinear -> DequantizeLinear [-> Add(bias)]`
/// with one grid (the same scale, zero point and type on both, the
/// quantized value read by that DequantizeLinear alone) becomes the product
/// with [`REQUANTIZE_SCALE`] and its companions, and the bias. The product
/// must have nothing after its dequantization yet (no bias, activation,
/// residual or grid).
pub fn fuse_requantized_outputs(g: &mut Graph) -> usize {
    let mut fused = 0;
    loop {
        let ix = Index::new(g);
        let mut hit: Option<(Vec<usize>, Node)> = None;
        for (fi, f) in g.nodes.iter().enumerate() {
            if f.domain != DOMAIN || f.op_type != FUSED_MATMUL_INTEGER || f.inputs.len() != 5 {
                continue;
            }
            if f.attrs.keys().any(|k| k != "activation")
                || f.attr_string("activation").ok().flatten().as_deref() != Some("none")
            {
                continue;
            }
            let Some(fo) = f.outputs.first().filter(|o| ix.single_use(o)) else { continue };
            let Some(&qi) = ix.consumers(g, fo).first() else { continue };
            let q = &g.nodes[qi];
            let Some(qo) = q.outputs.first().filter(|o| ix.single_use(o)) else { continue };
            if q.op_type != "QuantizeLinear" || q.input(0) != Some(fo.as_str()) {
                continue;
            }
            let Some(&di) = ix.consumers(g, qo).first() else { continue };
            let d = &g.nodes[di];
            if d.op_type != "DequantizeLinear" || d.input(0) != Some(qo.as_str()) || d.outputs.is_empty() {
                continue;
            }
            let (Some(grid), Some(back)) = (grid_of(g, q), grid_of(g, d)) else { continue };
            // The quantized value's declared type must agree with the grid
            // (a file that says otherwise is left for the operators).
            let declared = g.dtype_of(qo);
            if grid != back || declared.is_some_and(|t| t != if grid.2 { DType::I8 } else { DType::U8 }) {
                continue;
            }
            let (scale, zero, signed) = grid;
            if !(scale > 0.0 && scale.is_finite()) {
                continue;
            }
            let Some(n) = g.initializers.get(&f.inputs[1]).and_then(|w| w.shape().get(1).copied()) else { continue };
            let mut nf = f.clone();
            nf.attrs.insert(REQUANTIZE_SCALE.into(), Attr::Float(scale));
            nf.attrs.insert(REQUANTIZE_ZERO_POINT.into(), Attr::Int(zero as i64));
            nf.attrs.insert(REQUANTIZE_SIGNED.into(), Attr::Int(signed as i64));
            let mut matched = vec![fi, qi, di];
            nf.outputs = d.outputs.clone();
            if let Some((ai, b)) = following_bias(g, &ix, &d.outputs[0], n, g.shape_of(&f.inputs[0]).map(|s| s.len())) {
                matched.push(ai);
                nf.outputs = g.nodes[ai].outputs.clone();
                nf.inputs.push(b);
            }
            hit = Some((matched, nf));
            break;
        }
        let Some((matched, node)) = hit else { break };
        place_integer_product(g, matched, node);
        fused += 1;
    }
    fused
}

/// `Conv(DequantizeLinear(xq), DequantizeLinear(wq), [DequantizeLinear(bq)])
/// -> QuantizeLinear` (a static QDQ model's convolution, its activation
/// folded into the output's range as `quantize_static` writes it) becomes
/// ONNX's `QLinearConv`, which the int8 kernels run (tiles where the
/// machine has them). The activation and output grids are per tensor, the
/// weight's per tensor or per output channel (axis 0); the bias int32 with
/// scale `sx * sw` (what the file's dequantization of it multiplies by) and
/// zero point 0. The integer sum is exact; only the rescaling rounds (in
/// f64 instead of the float graph's f32 steps).
pub fn fuse_qdq_conv(g: &mut Graph) -> usize {
    let mut fused = 0;
    loop {
        let ix = Index::new(g);
        let mut hit: Option<ConvMatch> = None;
        for (ci, conv) in g.nodes.iter().enumerate() {
            if conv.op_type != "Conv"
                || !is_onnx(conv)
                || !(2..=3).contains(&conv.inputs.len())
                || conv.outputs.is_empty()
            {
                continue;
            }
            let Some(m) = qdq_conv(g, &ix, ci, conv) else { continue };
            hit = Some(m);
            break;
        }
        let Some((ci, qi, node, zeros)) = hit else { break };
        for (name, t) in zeros {
            g.initializers.insert(name, t);
        }
        replace_with_fused(g, vec![ci, qi], node);
        fused += 1;
    }
    fused
}

/// A match of [`fuse_qdq_conv`]: the Conv's index, its QuantizeLinear's,
/// the `QLinearConv` that replaces them and the zero points to add.
type ConvMatch = (usize, usize, Node, Vec<(String, Tensor)>);

/// The `QLinearConv` for [`fuse_qdq_conv`], if `conv` (node `ci`) matches.
fn qdq_conv(g: &Graph, ix: &Index, ci: usize, conv: &Node) -> Option<ConvMatch> {
    let (_, xdq) = ix.producer_of(g, &conv.inputs[0], "DequantizeLinear")?;
    let (_, wdq) = ix.producer_of(g, &conv.inputs[1], "DequantizeLinear")?;
    let (xq, sx, zx) = dequantize_operands(g, xdq)?;
    let (wq, sw, zw) = dequantize_operands(g, wdq)?;
    // The activation: 8-bit, one scale and zero point.
    let &[sx_value] = sx.as_slice::<f32>().ok()? else { return None };
    let x_type = match zx {
        Some(z) => g.initializers.get(z).filter(|t| t.numel() == 1).map(|t| t.dtype())?,
        None => g.dtype_of(xq)?,
    };
    if !matches!(x_type, DType::I8 | DType::U8) || g.dtype_of(xq).is_some_and(|t| t != x_type) {
        return None;
    }
    // The weight: constant 8-bit [M, C/group, k...], per tensor or per
    // output channel.
    let w = g.initializers.get(wq)?;
    if !matches!(w.dtype(), DType::I8 | DType::U8) || !(3..=5).contains(&w.rank()) {
        return None;
    }
    let m = w.shape()[0];
    // The i32 sum must not wrap where the float graph's cannot.
    if w.shape()[1..].iter().product::<usize>() > MAX_EXACT_K {
        return None;
    }
    let sw_values = sw.as_slice::<f32>().ok()?;
    let per_channel = sw_values.len() > 1;
    if per_channel && (sw_values.len() != m || sw.rank() != 1 || !matches!(wdq.attr_int("axis"), Ok(Some(0)))) {
        return None;
    }
    if let Some(z) = zw {
        let z = g.initializers.get(z)?;
        if z.dtype() != w.dtype() || z.numel() != sw_values.len() || z.rank() > 1 {
            return None;
        }
    }
    // The bias: int32 at the product's scale, zero point 0.
    let bias = match conv.input(2) {
        None => None,
        Some(b) => {
            let (_, bdq) = ix.producer_of(g, b, "DequantizeLinear")?;
            let (bq, sb, zb) = dequantize_operands(g, bdq)?;
            let bt = g.initializers.get(bq)?;
            if bt.dtype() != DType::I32 || bt.shape() != [m] {
                return None;
            }
            let sb = sb.as_slice::<f32>().ok()?;
            if !(sb.len() == 1 || (sb.len() == m && matches!(bdq.attr_int("axis"), Ok(None | Some(0))))) {
                return None;
            }
            let pick = |v: &[f32], c: usize| v[if v.len() == 1 { 0 } else { c }];
            let at_product_scale = (0..m).all(|c| {
                let want = sx_value * pick(sw_values, c);
                (pick(sb, c) - want).abs() <= 1e-6 * want.abs()
            });
            let zero = match zb {
                None => true,
                Some(z) => g
                    .initializers
                    .get(z)
                    .and_then(|t| t.as_slice::<i32>().ok())
                    .is_some_and(|v| v.iter().all(|&v| v == 0)),
            };
            if !at_product_scale || !zero {
                return None;
            }
            Some(bq.to_string())
        }
    };
    // The output: quantized once, per tensor.
    let co = conv.outputs.first().filter(|o| ix.single_use(o))?;
    let &qi = ix.consumers(g, co).first()?;
    let q = &g.nodes[qi];
    let qo = q.outputs.first()?;
    if q.op_type != "QuantizeLinear" || q.input(0) != Some(co.as_str()) {
        return None;
    }
    let (sy, _, y_signed) = grid_of(g, q)?;
    if !(sy > 0.0 && sy.is_finite())
        || g.dtype_of(qo).is_some_and(|t| t != if y_signed { DType::I8 } else { DType::U8 })
    {
        return None;
    }
    // QLinearConv takes every zero point: zeros where the file has none.
    let mut zeros = Vec::new();
    let mut zero_point = |given: Option<&str>, dtype: DType, what: &str| -> String {
        match given {
            Some(z) => z.to_string(),
            None => {
                let name = g.fresh_name(&format!("{}_{what}_zero", conv.name));
                let name =
                    if zeros.iter().any(|(n, _): &(String, Tensor)| n == &name) { format!("{name}_") } else { name };
                zeros.push((name.clone(), Tensor::zeros(dtype, &[]).expect("a scalar")));
                name
            }
        }
    };
    let zx_name = zero_point(zx, x_type, "x");
    let zw_name = zero_point(zw, w.dtype(), "w");
    let zy_name = zero_point(q.input(2), if y_signed { DType::I8 } else { DType::U8 }, "y");
    let mut inputs = vec![
        xq.to_string(),
        xdq.inputs[1].clone(),
        zx_name,
        wq.to_string(),
        wdq.inputs[1].clone(),
        zw_name,
        q.inputs[1].clone(),
        zy_name,
    ];
    inputs.extend(bias);
    let node = Node {
        name: format!("{}_qdq", conv.name),
        op_type: "QLinearConv".into(),
        domain: String::new(),
        inputs,
        outputs: q.outputs.clone(),
        attrs: conv.attrs.clone(),
    };
    Some((ci, qi, node, zeros))
}

pub fn fuse_qdq_matmul(g: &mut Graph) -> usize {
    let mut fused = 0;
    loop {
        let ix = Index::new(g);
        let mut hit: Option<(Vec<usize>, Node, Tensor)> = None;
        for (mi, mm) in g.nodes.iter().enumerate() {
            if mm.op_type != "MatMul" || !is_onnx(mm) || mm.inputs.len() != 2 || mm.outputs.is_empty() {
                continue;
            }
            let Some((_, xdq)) = ix.producer_of(g, &mm.inputs[0], "DequantizeLinear") else { continue };
            let Some((_, wdq)) = ix.producer_of(g, &mm.inputs[1], "DequantizeLinear") else { continue };
            let (Some((xq, sx, zx)), Some((wq, sw, zw))) = (dequantize_operands(g, xdq), dequantize_operands(g, wdq))
            else {
                continue;
            };
            // The weight: constant, 8-bit, [K, N]; its scale and zero point
            // one value or one per column (axis 1), so that they leave the
            // sum over K.
            let Some(w) = g.initializers.get(wq) else { continue };
            let &[k, n] = w.shape() else { continue };
            // The i32 sum must not wrap where the float graph's cannot.
            if k > MAX_EXACT_K {
                continue;
            }
            if !matches!(w.dtype(), DType::I8 | DType::U8) {
                continue;
            }
            let Some(sw) = scale_values(sw, n) else { continue };
            if sw.len() > 1 && !matches!(wdq.attr_int("axis"), Ok(None | Some(1 | -1))) {
                continue;
            }
            if let Some(z) = zw {
                match g.initializers.get(z) {
                    Some(z) if z.dtype() == w.dtype() && z.numel() == sw.len() && z.rank() <= 1 => {}
                    _ => continue,
                }
            }
            // The activation: 8-bit, one constant scale and zero point.
            let x_type = match zx {
                Some(z) => g.initializers.get(z).filter(|t| t.numel() == 1).map(|t| t.dtype()),
                None => g.dtype_of(xq),
            };
            // A declared type of `xq` that differs from its zero point's is
            // a broken file: left for the operators to report.
            let declared = g.dtype_of(xq);
            if !matches!(x_type, Some(DType::I8 | DType::U8)) || declared.is_some_and(|t| Some(t) != x_type) {
                continue;
            }
            let Some(&[sx]) = sx.as_slice::<f32>().ok() else { continue };
            let scale_shape = if sw.len() == 1 { vec![] } else { vec![n] };
            let scale = Tensor::from_vec(&scale_shape, sw.iter().map(|&s| sx * s).collect())
                .expect("one value or one per column");
            let inputs =
                vec![xq.to_string(), wq.to_string(), zx.unwrap_or("").to_string(), zw.unwrap_or("").to_string()];
            let mut matched = vec![mi];
            let mut outputs = mm.outputs.clone();
            let bias = following_bias(g, &ix, &mm.outputs[0], n, g.shape_of(xq).map(|s| s.len()));
            if let Some((ai, _)) = bias {
                matched.push(ai);
                outputs = g.nodes[ai].outputs.clone();
            }
            let bias = bias.map(|(_, b)| b);
            let mut node = Node {
                name: format!("{}_qdq", mm.name),
                op_type: FUSED_MATMUL_INTEGER.into(),
                domain: DOMAIN.into(),
                inputs,
                outputs,
                attrs: [("activation".to_string(), Attr::String(b"none".to_vec()))].into_iter().collect(),
            };
            node.inputs.extend(bias);
            hit = Some((matched, node, scale));
            break;
        }
        let Some((matched, mut node, scale)) = hit else { break };
        let scale_name = g.fresh_name(&format!("{}_scale", node.name));
        g.initializers.insert(scale_name.clone(), scale);
        node.inputs.insert(4, scale_name);
        place_integer_product(g, matched, node);
        fused += 1;
    }
    fused
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Dim, ValueInfo};

    /// `y = DQ(Q(x)) @ DQ(wq) + bias`, as `quantize_static` writes it.
    fn qdq_graph(w_dtype: DType, w_scales: usize, axis: Option<i64>) -> Graph {
        let (k, n) = (3, 4);
        let mut g = Graph {
            nodes: vec![
                Node::new("QuantizeLinear", "q", &["x", "sx", "zx"], &["xq"]),
                Node::new("DequantizeLinear", "dqx", &["xq", "sx", "zx"], &["xd"]),
                Node::new("DequantizeLinear", "dqw", &["wq", "sw", "zw"], &["wd"]),
                Node::new("MatMul", "mm", &["xd", "wd"], &["mm"]),
                Node::new("Add", "add", &["mm", "bias"], &["y"]),
            ],
            inputs: vec![ValueInfo {
                name: "x".into(),
                dtype: Some(DType::F32),
                shape: Some(vec![Dim::Sym("b".into()), Dim::Known(k)]),
            }],
            outputs: vec![ValueInfo { name: "y".into(), dtype: Some(DType::F32), shape: None }],
            ..Default::default()
        };
        if let Some(a) = axis {
            g.nodes[2].attrs.insert("axis".into(), Attr::Int(a));
        }
        let shape: &[usize] = if w_scales == 1 { &[] } else { &[w_scales] };
        g.initializers.insert("sx".into(), Tensor::scalar(0.5f32));
        g.initializers.insert("zx".into(), Tensor::scalar(3u8));
        g.initializers.insert("wq".into(), Tensor::zeros(w_dtype, &[k, n]).unwrap());
        g.initializers
            .insert("sw".into(), Tensor::from_vec(shape, (1..=w_scales).map(|i| i as f32).collect()).unwrap());
        g.initializers.insert("zw".into(), Tensor::zeros(w_dtype, shape).unwrap());
        g.initializers.insert("bias".into(), Tensor::zeros(DType::F32, &[n]).unwrap());
        crate::shape_inference::infer(&mut g).unwrap();
        g
    }

    #[test]
    fn qdq_product_becomes_one_integer_node_with_its_bias() {
        for (w_dtype, scales, axis) in [(DType::I8, 4, None), (DType::I8, 4, Some(-1)), (DType::U8, 1, Some(0))] {
            let mut g = qdq_graph(w_dtype, scales, axis);
            assert!(keeps_quantized_weight(&g, &g.nodes[2]));
            assert!(!keeps_quantized_weight(&g, &g.nodes[1]), "the activation's DQ has no constant input");
            assert_eq!(fuse_qdq_matmul(&mut g), 1, "{w_dtype} {scales} {axis:?}");
            let f = g.nodes.iter().find(|n| n.op_type == FUSED_MATMUL_INTEGER).expect("fused node");
            assert_eq!(&f.inputs[..4], &["xq", "wq", "zx", "zw"]);
            assert_eq!(f.inputs[5], "bias");
            assert_eq!(f.outputs, vec!["y"]);
            let want: Vec<f32> = (1..=scales).map(|i| 0.5 * i as f32).collect();
            assert_eq!(g.initializers[&f.inputs[4]].as_slice::<f32>().unwrap(), &want[..]);
            assert!(!g.nodes.iter().any(|n| n.op_type == "MatMul" || n.op_type == "Add"));
        }
    }

    #[test]
    fn products_whose_scales_do_not_factor_out_stay_apart() {
        // Per-row weight scales (axis 0) run along K: a square weight, so
        // that only the axis tells them from per-column ones.
        for (axis, fused) in [(Some(0), 0), (Some(1), 1)] {
            let mut g = qdq_graph(DType::I8, 4, axis);
            g.initializers.insert("wq".into(), Tensor::zeros(DType::I8, &[4, 4]).unwrap());
            g.inputs[0].shape = Some(vec![Dim::Sym("b".into()), Dim::Known(4)]);
            crate::shape_inference::infer(&mut g).unwrap();
            assert_eq!(fuse_qdq_matmul(&mut g), fused, "axis {axis:?}");
        }
        // Blocked weight scales.
        let mut g = qdq_graph(DType::I8, 4, None);
        g.nodes[2].attrs.insert("block_size".into(), Attr::Int(2));
        assert_eq!(fuse_qdq_matmul(&mut g), 0);
        // An activation scale known only at run time.
        let mut g = qdq_graph(DType::I8, 4, None);
        let sx = g.initializers.remove("sx").unwrap();
        g.inputs.push(ValueInfo { name: "sx".into(), dtype: Some(DType::F32), shape: Some(vec![]) });
        assert_eq!(sx.numel(), 1);
        assert_eq!(fuse_qdq_matmul(&mut g), 0);
        // A sum longer than an i32 holds exactly, and the longest that fits.
        for (k, fused) in [(MAX_EXACT_K + 1, 0), (MAX_EXACT_K, 1)] {
            let mut g = qdq_graph(DType::I8, 4, None);
            g.initializers.insert("wq".into(), Tensor::zeros(DType::I8, &[k, 4]).unwrap());
            g.inputs[0].shape = Some(vec![Dim::Sym("b".into()), Dim::Known(k)]);
            crate::shape_inference::infer(&mut g).unwrap();
            assert_eq!(fuse_qdq_matmul(&mut g), fused, "K = {k}");
        }
        // A 16-bit weight.
        let mut g = qdq_graph(DType::I16, 4, None);
        assert!(!keeps_quantized_weight(&g, &g.nodes[2]));
        assert_eq!(fuse_qdq_matmul(&mut g), 0);
        // A weight computed at run time.
        let mut g = qdq_graph(DType::I8, 4, None);
        let wq = g.initializers.remove("wq").unwrap();
        g.inputs.push(ValueInfo {
            name: "wq".into(),
            dtype: Some(DType::I8),
            shape: Some(vec![Dim::Known(3), Dim::Known(4)]),
        });
        assert_eq!(wq.rank(), 2);
        assert_eq!(fuse_qdq_matmul(&mut g), 0);
    }

    /// [`qdq_graph`] with the product quantized again before its bias:
    /// `MatMul -> Q(sy, zy) -> DQ(sy2, zy) -> Add(bias)`.
    fn requantized_graph(sy2: f32) -> Graph {
        let mut g = qdq_graph(DType::I8, 4, None);
        g.nodes[4].inputs[0] = "yd".into();
        g.nodes.insert(4, Node::new("QuantizeLinear", "qy", &["mm", "sy", "zy"], &["yq"]));
        g.nodes.insert(5, Node::new("DequantizeLinear", "dqy", &["yq", "sy2", "zy"], &["yd"]));
        g.initializers.insert("sy".into(), Tensor::scalar(0.25f32));
        g.initializers.insert("sy2".into(), Tensor::scalar(sy2));
        g.initializers.insert("zy".into(), Tensor::scalar(-7i8));
        crate::shape_inference::infer(&mut g).unwrap();
        g
    }

    #[test]
    fn requantized_output_and_its_bias_join_the_product() {
        let mut g = requantized_graph(0.25);
        assert_eq!(fuse_qdq_matmul(&mut g), 1);
        assert_eq!(fuse_requantized_outputs(&mut g), 1);
        let f = g.nodes.iter().find(|n| n.op_type == FUSED_MATMUL_INTEGER).expect("fused node");
        assert_eq!(f.attr_float(REQUANTIZE_SCALE).unwrap(), Some(0.25));
        assert_eq!(f.attr_int(REQUANTIZE_ZERO_POINT).unwrap(), Some(-7));
        assert_eq!(f.attr_int(REQUANTIZE_SIGNED).unwrap(), Some(1));
        assert_eq!((f.inputs[5].as_str(), f.outputs.clone()), ("bias", vec!["y".to_string()]));
        assert!(!g.nodes.iter().any(|n| n.name == "qy" || n.name == "dqy" || n.op_type == "Add"));
    }

    #[test]
    fn requantization_that_is_not_a_round_trip_stays() {
        // Dequantized with another scale.
        let mut g = requantized_graph(0.5);
        assert_eq!(fuse_qdq_matmul(&mut g), 1);
        assert_eq!(fuse_requantized_outputs(&mut g), 0);
        // The quantized output read by another node as well.
        let mut g = requantized_graph(0.25);
        g.nodes.push(Node::new("Identity", "other", &["yq"], &["yq2"]));
        assert_eq!(fuse_qdq_matmul(&mut g), 1);
        assert_eq!(fuse_requantized_outputs(&mut g), 0);
        // The product already has a bias (the grid would come after it).
        let mut g = requantized_graph(0.25);
        g.nodes[3].outputs[0] = "mm0".into();
        g.nodes.insert(4, Node::new("Add", "early_bias", &["mm0", "bias"], &["mm"]));
        crate::shape_inference::infer(&mut g).unwrap();
        assert_eq!(fuse_qdq_matmul(&mut g), 1);
        assert_eq!(fuse_requantized_outputs(&mut g), 0);
    }

    #[test]
    fn weight_dequantization_of_a_float_activation_product_still_folds() {
        // Weight-only quantization: the activation is plain f32.
        let mut g = qdq_graph(DType::I8, 4, None);
        g.nodes.retain(|n| n.name != "q" && n.name != "dqx");
        g.nodes[1].inputs[0] = "x".into();
        assert!(!keeps_quantized_weight(&g, &g.nodes[0]));
        assert_eq!(fuse_qdq_matmul(&mut g), 0);
    }
}
