//! Convolution fusions for inference.
//!
//! * An inference `BatchNormalization` after a `Conv` with constant weights
//!   is folded into them: `W' = W * s`, `B' = (B - mean) * s + beta` with
//!   `s = scale / sqrt(var + epsilon)` per output channel, so the
//!   normalization costs nothing at run time.
//! * A per-channel `Mul` or `Add` by a constant after such a Conv folds into
//!   its weights and bias the same way.
//! * `Conv [-> Add|Sum(residual)] [-> activation]` becomes
//!   `tessera:FusedConv(X, W, [B], [residual])` with Conv's attributes and
//!   an `activation`: `y = act(conv(X, W) + B + residual)`, the order of a
//!   residual block (`Relu(Conv + shortcut)`). The activation is ReLU, GELU,
//!   SiLU (`x * Sigmoid(x)`) or ReLU6 (`Clip(0, 6)`). The provider finishes each output block
//!   while it is in cache, instead of three more passes over memory.

use super::fuse_matmul::{activation_of, DOMAIN};
use super::pattern::{const_scalar, is_onnx, other_input, replace_with_fused, Index};
use crate::{Attr, DType, Dim, Graph, Node, Tensor};

pub const FUSED_CONV: &str = "FusedConv";
/// `tessera:FusedBatchNorm(X, scale, B, mean, var)`: an inference
/// BatchNormalization with the activation that follows it (attribute
/// `activation`), one pass over the tensor.
pub const FUSED_BATCH_NORM: &str = "FusedBatchNorm";

/// The f32 values of a constant 1-D tensor of `len` values.
fn const_vector(g: &Graph, name: &str, len: usize) -> Option<Vec<f64>> {
    let t = g.initializers.get(name)?;
    (t.dtype() == DType::F32 && t.rank() == 1 && t.numel() == len).then(|| t.to_f64_vec())
}

/// A value nothing reads and the graph does not output (an unused optional
/// output), or the empty name of an absent one.
fn unused(g: &Graph, ix: &Index, v: &str) -> bool {
    v.is_empty() || (!ix.uses.contains_key(v) && !g.outputs.iter().any(|o| o.name == v))
}

/// Node `ci` (a Conv, or a BatchNormalization) takes new constants in its
/// slots 1 and 2 (weight and bias, or scale and shift) and the output of
/// node `oi`, the op folded into it, whose place it takes.
fn absorb(g: &mut Graph, ci: usize, oi: usize, w: Tensor, b: Tensor, tag: &str) {
    let mut node = g.nodes[ci].clone();
    let wn = g.fresh_name(&format!("{}{tag}_w", node.name));
    let bn = g.fresh_name(&format!("{}{tag}_b", node.name));
    g.initializers.insert(wn.clone(), w);
    g.initializers.insert(bn.clone(), b);
    if node.inputs.len() < 3 {
        node.inputs.resize(3, String::new());
    }
    node.inputs[1] = wn;
    node.inputs[2] = bn;
    node.outputs = vec![g.nodes[oi].outputs[0].clone()];
    g.nodes[oi] = node;
    g.nodes.remove(ci);
}

/// Folds inference BatchNormalizations into the Conv that alone feeds them;
/// returns how many.
pub fn fold_batch_norm(g: &mut Graph) -> usize {
    let mut folded = 0;
    loop {
        let ix = Index::new(g);
        let mut hit = None;
        for (bi, bn) in g.nodes.iter().enumerate() {
            if bn.op_type != "BatchNormalization" || !is_onnx(bn) || bn.inputs.len() != 5 || bn.outputs.is_empty() {
                continue;
            }
            if bn.attr_int_or("training_mode", 0).unwrap_or(1) != 0
                || !bn.outputs[1..].iter().all(|o| unused(g, &ix, o))
            {
                continue;
            }
            let Some((ci, conv)) = ix.producer_of(g, &bn.inputs[0], "Conv") else { continue };
            if !ix.single_use(&conv.outputs[0]) || conv.outputs.len() != 1 {
                continue;
            }
            let Some(w) = conv.inputs.get(1).and_then(|w| g.initializers.get(w)) else { continue };
            if w.dtype() != DType::F32 || w.rank() < 3 {
                continue;
            }
            let m = w.shape()[0];
            let bias = match conv.inputs.get(2).filter(|b| !b.is_empty()) {
                Some(b) => match const_vector(g, b, m) {
                    Some(v) => v,
                    None => continue,
                },
                None => vec![0.0; m],
            };
            let params: Option<Vec<Vec<f64>>> = bn.inputs[1..].iter().map(|p| const_vector(g, p, m)).collect();
            let Some(params) = params else { continue };
            let Ok(eps) = bn.attr_float_or("epsilon", 1e-5) else { continue };
            let (scale, beta, mean, var) = (&params[0], &params[1], &params[2], &params[3]);
            let s: Vec<f64> = (0..m).map(|c| scale[c] / (var[c] + eps as f64).sqrt()).collect();
            if s.iter().any(|v| !v.is_finite()) {
                continue;
            }
            let Ok(ws) = w.as_slice::<f32>() else { continue };
            let per = ws.len() / m.max(1);
            let new_w: Vec<f32> = ws.iter().enumerate().map(|(i, &x)| (x as f64 * s[i / per]) as f32).collect();
            let new_b: Vec<f32> = (0..m).map(|c| ((bias[c] - mean[c]) * s[c] + beta[c]) as f32).collect();
            let (Ok(wt), Ok(bt)) = (Tensor::from_vec(w.shape(), new_w), Tensor::from_vec(&[m], new_b)) else {
                continue;
            };
            hit = Some((ci, bi, wt, bt));
            break;
        }
        let Some((ci, bi, wt, bt)) = hit else { break };
        absorb(g, ci, bi, wt, bt, "_bn");
        folded += 1;
    }
    folded
}

/// The per-channel values of a constant that broadcasts against a
/// convolution output of rank `out_rank` with `m` channels along the
/// channel axis only (`[m, 1, 1]`, `[1, m, 1, 1]`, a scalar...).
fn channel_vector(g: &Graph, name: &str, out_rank: usize, m: usize) -> Option<Vec<f64>> {
    let t = g.initializers.get(name)?;
    let shape = t.shape();
    if t.dtype() != DType::F32 || shape.len() > out_rank {
        return None;
    }
    // Output axis of each constant dimension (numpy alignment from the right).
    let first = out_rank - shape.len();
    let mut len = 1;
    for (i, &d) in shape.iter().enumerate() {
        match (first + i == 1, d) {
            (_, 1) => {}
            (true, d) if d == m => len = m,
            _ => return None,
        }
    }
    let v = t.to_f64_vec();
    Some(if len == m { v } else { vec![v[0]; m] })
}

/// Folds a per-channel `Mul` or `Add` by a constant that alone follows a
/// Conv with constant weights into the weights and bias (exporters write a
/// normalization's scale and shift this way); returns how many.
pub fn fold_channel_affine(g: &mut Graph) -> usize {
    let mut folded = 0;
    loop {
        let ix = Index::new(g);
        let mut hit = None;
        for (ci, conv) in g.nodes.iter().enumerate() {
            if conv.op_type == "BatchNormalization" {
                if let Some(h) = bn_affine(g, &ix, ci) {
                    hit = Some(h);
                    break;
                }
                continue;
            }
            if conv.op_type != "Conv" || !is_onnx(conv) || conv.outputs.len() != 1 || !ix.single_use(&conv.outputs[0]) {
                continue;
            }
            let Some(w) = conv.inputs.get(1).and_then(|w| g.initializers.get(w)) else { continue };
            if w.dtype() != DType::F32 || w.rank() < 3 {
                continue;
            }
            let (m, rank) = (w.shape()[0], w.rank());
            let Some(&oi) = ix.consumers(g, &conv.outputs[0]).first() else { continue };
            let op = &g.nodes[oi];
            if !is_onnx(op) || !matches!(op.op_type.as_str(), "Mul" | "Add") || op.outputs.len() != 1 {
                continue;
            }
            let Some(k) = other_input(op, &conv.outputs[0]) else { continue };
            let Some(v) = channel_vector(g, k, rank, m) else { continue };
            let bias = match conv.inputs.get(2).filter(|b| !b.is_empty()) {
                Some(b) => match g.initializers.get(b) {
                    Some(t) if t.dtype() == DType::F32 && t.rank() == 1 && t.numel() == m => t.to_f64_vec(),
                    _ => continue,
                },
                None => vec![0.0; m],
            };
            let Ok(ws) = w.as_slice::<f32>() else { continue };
            let (new_w, new_b): (Vec<f32>, Vec<f32>) = if op.op_type == "Mul" {
                let per = ws.len() / m.max(1);
                (
                    ws.iter().enumerate().map(|(i, &x)| (x as f64 * v[i / per]) as f32).collect(),
                    (0..m).map(|c| (bias[c] * v[c]) as f32).collect(),
                )
            } else {
                (ws.to_vec(), (0..m).map(|c| (bias[c] + v[c]) as f32).collect())
            };
            if new_w.iter().chain(&new_b).any(|x| !x.is_finite()) {
                continue;
            }
            let (Ok(wt), Ok(bt)) = (Tensor::from_vec(w.shape(), new_w), Tensor::from_vec(&[m], new_b)) else {
                continue;
            };
            hit = Some((ci, oi, wt, bt));
            break;
        }
        let Some((ci, oi, wt, bt)) = hit else { break };
        absorb(g, ci, oi, wt, bt, "");
        folded += 1;
    }
    folded
}

/// For an inference BatchNormalization at `bi` with constant parameters
/// whose output alone feeds a per-channel `Mul` or `Add` by a constant: that
/// op's index and the normalization's new scale and shift (`scale * k`,
/// `B * k`; or `B + k`).
fn bn_affine(g: &Graph, ix: &Index, bi: usize) -> Option<(usize, usize, Tensor, Tensor)> {
    let bn = &g.nodes[bi];
    if !is_onnx(bn) || bn.inputs.len() != 5 || bn.outputs.is_empty() || !ix.single_use(&bn.outputs[0]) {
        return None;
    }
    if bn.attr_int_or("training_mode", 0).ok()? != 0 || !bn.outputs[1..].iter().all(|o| unused(g, ix, o)) {
        return None;
    }
    let rank = g.shape_of(&bn.outputs[0]).or_else(|| g.shape_of(&bn.inputs[0]))?.len();
    let m = g.initializers.get(&bn.inputs[1])?.numel();
    let (scale, shift) = (const_vector(g, &bn.inputs[1], m)?, const_vector(g, &bn.inputs[2], m)?);
    const_vector(g, &bn.inputs[3], m)?;
    const_vector(g, &bn.inputs[4], m)?;
    let &oi = ix.consumers(g, &bn.outputs[0]).first()?;
    let op = &g.nodes[oi];
    if !is_onnx(op) || !matches!(op.op_type.as_str(), "Mul" | "Add") || op.outputs.len() != 1 || rank < 2 {
        return None;
    }
    let v = channel_vector(g, other_input(op, &bn.outputs[0])?, rank, m)?;
    let (scale, shift): (Vec<f32>, Vec<f32>) = if op.op_type == "Mul" {
        ((0..m).map(|c| (scale[c] * v[c]) as f32).collect(), (0..m).map(|c| (shift[c] * v[c]) as f32).collect())
    } else {
        (scale.iter().map(|&x| x as f32).collect(), (0..m).map(|c| (shift[c] + v[c]) as f32).collect())
    };
    if scale.iter().chain(&shift).any(|x| !x.is_finite()) {
        return None;
    }
    Some((bi, oi, Tensor::from_vec(&[m], scale).ok()?, Tensor::from_vec(&[m], shift).ok()?))
}

fn known_shape(g: &Graph, v: &str) -> Option<Vec<Dim>> {
    g.shape_of(v).filter(|s| s.iter().all(|d| !matches!(d, Dim::Unknown)))
}

/// The binary residual add consuming `v`: an `Add` or a two-input `Sum`
/// whose other operand is a computed value of `v`'s (known) shape. Returns
/// the node's index and the other operand.
fn residual_add<'g>(g: &'g Graph, ix: &Index, v: &str) -> Option<(usize, &'g str)> {
    if !ix.single_use(v) {
        return None;
    }
    let &ai = ix.consumers(g, v).first()?;
    let add = &g.nodes[ai];
    if !is_onnx(add) || !matches!(add.op_type.as_str(), "Add" | "Sum") {
        return None;
    }
    let r = other_input(add, v)?;
    if g.initializers.contains_key(r) || known_shape(g, r)? != known_shape(g, v)? {
        return None;
    }
    Some((ai, r))
}

/// The activation applied to `v` alone: its single consumer's (ReLU, GELU),
/// or SiLU written `Mul(v, Sigmoid(v))`. Returns the activation and the
/// nodes it replaces (the last one's output becomes the fused output).
fn activation_after(g: &Graph, ix: &Index, v: &str) -> Option<(&'static str, Vec<usize>)> {
    let consumers = ix.consumers(g, v);
    let uses = ix.uses.get(v).copied().unwrap_or(0);
    if uses == 1 && consumers.len() == 1 {
        let c = &g.nodes[consumers[0]];
        let act = activation_of(c).or_else(|| is_relu6(g, c).then_some("relu6"));
        return act.map(|a| (a, vec![consumers[0]]));
    }
    if uses != 2 || consumers.len() != 2 {
        return None;
    }
    let (si, mi) = match (g.nodes[consumers[0]].op_type.as_str(), g.nodes[consumers[1]].op_type.as_str()) {
        ("Sigmoid", "Mul") => (consumers[0], consumers[1]),
        ("Mul", "Sigmoid") => (consumers[1], consumers[0]),
        _ => return None,
    };
    let (s, m) = (&g.nodes[si], &g.nodes[mi]);
    let silu = is_onnx(s)
        && is_onnx(m)
        && s.outputs.len() == 1
        && ix.single_use(&s.outputs[0])
        && other_input(m, v) == Some(s.outputs[0].as_str());
    silu.then(|| ("silu", vec![si, mi]))
}

/// `Clip` to [0, 6]: bounds as attributes (before opset 11) or constant
/// inputs.
fn is_relu6(g: &Graph, n: &Node) -> bool {
    if !is_onnx(n) || n.op_type != "Clip" || n.outputs.len() != 1 {
        return false;
    }
    let bound = |slot: usize, attr: &str| match n.inputs.get(slot).filter(|s| !s.is_empty()) {
        Some(name) => const_scalar(g, name),
        None => n.attr_float(attr).ok().flatten().map(f64::from),
    };
    bound(1, "min") == Some(0.0) && bound(2, "max") == Some(6.0)
}

/// Fuses each float Conv with the residual add and activation that follow
/// it; returns how many Convs became `tessera:FusedConv`.
pub fn fuse_conv_epilogues(g: &mut Graph) -> usize {
    let mut fused = 0;
    loop {
        let ix = Index::new(g);
        let mut hit: Option<(usize, Vec<usize>, Node)> = None;
        for (ci, conv) in g.nodes.iter().enumerate() {
            if conv.op_type != "Conv" || !is_onnx(conv) || conv.outputs.len() != 1 || conv.inputs.len() < 2 {
                continue;
            }
            let y = conv.outputs[0].as_str();
            if g.dtype_of(y) != Some(DType::F32) || g.outputs.iter().any(|o| o.name == y) {
                continue;
            }
            let mut nf = conv.clone();
            nf.domain = DOMAIN.into();
            nf.op_type = FUSED_CONV.into();
            nf.inputs.resize(3, String::new());
            let mut replaced = Vec::new();
            let mut out = y.to_string();
            if let Some((ai, r)) = residual_add(g, &ix, y) {
                nf.inputs.push(r.to_string());
                replaced.push(ai);
                out = g.nodes[ai].outputs[0].clone();
            }
            let act = if g.outputs.iter().any(|o| o.name == out) { None } else { activation_after(g, &ix, &out) };
            if let Some((a, nodes)) = act {
                nf.attrs.insert("activation".into(), Attr::String(a.as_bytes().to_vec()));
                out = g.nodes[*nodes.last().expect("one node at least")].outputs[0].clone();
                replaced.extend(nodes);
            }
            if replaced.is_empty() {
                continue;
            }
            // Trailing empty optional inputs go.
            while nf.inputs.last().is_some_and(|s| s.is_empty()) {
                nf.inputs.pop();
            }
            nf.outputs = vec![out];
            hit = Some((ci, replaced, nf));
            break;
        }
        let Some((ci, mut replaced, nf)) = hit else { break };
        replaced.push(ci);
        replace_with_fused(g, replaced, nf);
        fused += 1;
    }
    fused
}

/// Fuses each inference BatchNormalization (float, one output) with the
/// activation that alone consumes it (ReLU ahead of a DenseNet or
/// pre-activation ResNet convolution, which nothing folds into the weights
/// because the ReLU sits between); returns how many became
/// `tessera:FusedBatchNorm`. Run after the folds into convolutions, so it
/// takes only the normalizations they left.
pub fn fuse_batch_norm_activation(g: &mut Graph) -> usize {
    let mut fused = 0;
    loop {
        let ix = Index::new(g);
        let mut hit: Option<(usize, Vec<usize>, Node)> = None;
        for (bi, bn) in g.nodes.iter().enumerate() {
            // Declared extra outputs mean training mode before opset 14:
            // only the plain inference form is taken.
            if bn.op_type != "BatchNormalization" || !is_onnx(bn) || bn.inputs.len() != 5 {
                continue;
            }
            if bn.outputs.is_empty() || bn.outputs[1..].iter().any(|o| !o.is_empty()) {
                continue;
            }
            if bn.attr_int_or("training_mode", 0).ok() != Some(0) || bn.attr_int_or("spatial", 1).ok() != Some(1) {
                continue;
            }
            let y = bn.outputs[0].as_str();
            if g.dtype_of(y) != Some(DType::F32) || g.outputs.iter().any(|o| o.name == y) {
                continue;
            }
            let Some((act, nodes)) = activation_after(g, &ix, y) else { continue };
            let mut nf = bn.clone();
            nf.domain = DOMAIN.into();
            nf.op_type = FUSED_BATCH_NORM.into();
            nf.attrs.remove("training_mode");
            nf.attrs.insert("activation".into(), Attr::String(act.as_bytes().to_vec()));
            nf.outputs = vec![g.nodes[*nodes.last().expect("one node at least")].outputs[0].clone()];
            hit = Some((bi, nodes, nf));
            break;
        }
        let Some((bi, mut replaced, nf)) = hit else { break };
        replaced.push(bi);
        replace_with_fused(g, replaced, nf);
        fused += 1;
    }
    fused
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ValueInfo;

    fn vi(n: &str, shape: &[usize]) -> ValueInfo {
        ValueInfo {
            name: n.into(),
            dtype: Some(DType::F32),
            shape: Some(shape.iter().map(|&d| Dim::Known(d)).collect()),
        }
    }

    fn conv_graph(with_bias: bool) -> Graph {
        let mut g = Graph::default();
        g.inputs.push(vi("x", &[1, 2, 4, 4]));
        let ins: &[&str] = if with_bias { &["x", "w", "b"] } else { &["x", "w"] };
        g.nodes.push(Node::new("Conv", "conv", ins, &["c"]));
        g.initializers
            .insert("w".into(), Tensor::from_vec(&[3, 2, 1, 1], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap());
        g.initializers.insert("b".into(), Tensor::from_vec(&[3], vec![0.5f32, -1.0, 2.0]).unwrap());
        for v in ["c", "y", "z", "s"] {
            g.value_info.insert(v.into(), vi(v, &[1, 3, 4, 4]));
        }
        g
    }

    fn add_bn(g: &mut Graph) {
        g.nodes.push(Node::new("BatchNormalization", "bn", &["c", "g", "be", "mu", "var"], &["y"]));
        g.nodes[1].attrs.insert("epsilon".into(), Attr::Float(0.25));
        for (n, v) in
            [("g", [2.0f32, 1.0, -1.0]), ("be", [1.0, 0.0, 3.0]), ("mu", [0.5, 1.0, -2.0]), ("var", [0.75, 3.75, 0.0])]
        {
            g.initializers.insert(n.into(), Tensor::from_vec(&[3], v.to_vec()).unwrap());
        }
        g.outputs.push(vi("y", &[1, 3, 4, 4]));
    }

    /// A BatchNormalization that no convolution absorbs, then ReLU, becomes
    /// one FusedBatchNorm; a shared output or declared statistics outputs
    /// (training before opset 14) stay.
    #[test]
    fn batch_norm_and_relu_fuse_when_nothing_folds_them() {
        let build = |extra_use: bool, stats_out: bool| {
            let mut g = Graph::default();
            g.inputs.push(vi("x", &[1, 4, 5, 5]));
            for (name, v) in [("s", 1.5f32), ("b", 0.25), ("m", 0.5), ("v", 2.0)] {
                g.initializers.insert(name.into(), Tensor::from_vec(&[4], vec![v; 4]).unwrap());
            }
            let mut bn_out = vec!["bn"];
            if stats_out {
                bn_out.extend(["rm", "rv"]);
            }
            g.nodes.push(Node::new("BatchNormalization", "n", &["x", "s", "b", "m", "v"], &bn_out));
            g.nodes.push(Node::new("Relu", "r", &["bn"], &["y"]));
            g.outputs.push(vi("y", &[1, 4, 5, 5]));
            if extra_use {
                g.nodes.push(Node::new("Neg", "e", &["bn"], &["z"]));
                g.outputs.push(vi("z", &[1, 4, 5, 5]));
            }
            crate::shape_inference::infer(&mut g).unwrap();
            g
        };
        let mut g = build(false, false);
        assert_eq!(fuse_batch_norm_activation(&mut g), 1);
        assert_eq!(g.nodes.len(), 1);
        let n = &g.nodes[0];
        assert_eq!((n.domain.as_str(), n.op_type.as_str()), (DOMAIN, FUSED_BATCH_NORM));
        assert_eq!(n.inputs, ["x", "s", "b", "m", "v"]);
        assert_eq!(n.outputs, ["y"]);
        assert_eq!(n.attr_string("activation").unwrap().as_deref(), Some("relu"));
        for (extra_use, stats_out) in [(true, false), (false, true)] {
            let mut g = build(extra_use, stats_out);
            assert_eq!(fuse_batch_norm_activation(&mut g), 0, "extra use {extra_use}, stats {stats_out}");
        }
    }

    #[test]
    fn batch_norm_folds_into_weights_and_bias() {
        for with_bias in [true, false] {
            let mut g = conv_graph(with_bias);
            add_bn(&mut g);
            assert_eq!(fold_batch_norm(&mut g), 1);
            assert_eq!(g.nodes.len(), 1);
            let n = &g.nodes[0];
            assert_eq!((n.op_type.as_str(), n.outputs[0].as_str()), ("Conv", "y"));
            let w = g.initializers[&n.inputs[1]].as_slice::<f32>().unwrap().to_vec();
            let b = g.initializers[&n.inputs[2]].as_slice::<f32>().unwrap().to_vec();
            // s = g / sqrt(var + 0.25) = [2, 0.5, -2].
            assert_eq!(w, vec![2.0, 4.0, 1.5, 2.0, -10.0, -12.0]);
            let b0 = if with_bias { [0.5, -1.0, 2.0] } else { [0.0; 3] };
            let want = [(b0[0] - 0.5) * 2.0 + 1.0, (b0[1] - 1.0) * 0.5, (b0[2] + 2.0) * -2.0 + 3.0];
            assert_eq!(b, want.to_vec());
        }
    }

    #[test]
    fn batch_norm_stays_when_the_conv_output_is_shared_or_training() {
        let mut g = conv_graph(true);
        add_bn(&mut g);
        g.outputs.push(vi("c", &[1, 3, 4, 4]));
        assert_eq!(fold_batch_norm(&mut g), 0);
        let mut g = conv_graph(true);
        add_bn(&mut g);
        g.nodes[1].attrs.insert("training_mode".into(), Attr::Int(1));
        assert_eq!(fold_batch_norm(&mut g), 0);
        let mut g = conv_graph(true);
        add_bn(&mut g);
        g.initializers.remove("var");
        g.inputs.push(vi("var", &[3]));
        assert_eq!(fold_batch_norm(&mut g), 0);
    }

    #[test]
    fn channel_scale_and_shift_fold_into_the_conv() {
        let mut g = conv_graph(true);
        g.nodes.push(Node::new("Mul", "mul", &["c", "k"], &["s"]));
        g.nodes.push(Node::new("Add", "add", &["h", "s"], &["y"]));
        g.initializers.insert("k".into(), Tensor::from_vec(&[3, 1, 1], vec![2.0f32, -1.0, 0.5]).unwrap());
        g.initializers.insert("h".into(), Tensor::from_vec(&[1, 1, 1, 1], vec![10.0f32]).unwrap());
        g.outputs.push(vi("y", &[1, 3, 4, 4]));
        assert_eq!(fold_channel_affine(&mut g), 2);
        assert_eq!(g.nodes.len(), 1);
        let n = &g.nodes[0];
        assert_eq!((n.op_type.as_str(), n.outputs[0].as_str()), ("Conv", "y"));
        let w = g.initializers[&n.inputs[1]].as_slice::<f32>().unwrap().to_vec();
        let b = g.initializers[&n.inputs[2]].as_slice::<f32>().unwrap().to_vec();
        assert_eq!(w, vec![2.0, 4.0, -3.0, -4.0, 2.5, 3.0]);
        assert_eq!(b, vec![0.5 * 2.0 + 10.0, -1.0 * -1.0 + 10.0, 2.0 * 0.5 + 10.0]);
    }

    #[test]
    fn channel_scale_and_shift_fold_into_a_batch_norm() {
        let mut g = conv_graph(true);
        add_bn(&mut g);
        g.outputs.clear();
        g.value_info.insert("y".into(), vi("y", &[1, 3, 4, 4]));
        g.nodes.push(Node::new("Mul", "mul", &["y", "k"], &["s"]));
        g.nodes.push(Node::new("Add", "add", &["s", "h"], &["z"]));
        g.initializers.insert("k".into(), Tensor::from_vec(&[1, 3, 1, 1], vec![2.0f32, -1.0, 0.5]).unwrap());
        g.initializers.insert("h".into(), Tensor::from_vec(&[3, 1, 1], vec![1.0f32, 2.0, 3.0]).unwrap());
        g.outputs.push(vi("z", &[1, 3, 4, 4]));
        // The Conv's own output feeds the normalization: fold that first
        // would change the test, so only the affine pass runs.
        assert_eq!(fold_channel_affine(&mut g), 2);
        assert_eq!(g.nodes.len(), 2);
        let bn = &g.nodes[1];
        assert_eq!((bn.op_type.as_str(), bn.outputs[0].as_str()), ("BatchNormalization", "z"));
        assert_eq!(&bn.inputs[3..], &["mu", "var"]);
        assert_eq!(g.initializers[&bn.inputs[1]].as_slice::<f32>().unwrap(), &[4.0, -1.0, -0.5]);
        assert_eq!(g.initializers[&bn.inputs[2]].as_slice::<f32>().unwrap(), &[3.0, 2.0, 4.5]);
    }

    #[test]
    fn spatial_or_batch_constants_stay() {
        for shape in [vec![1usize, 1, 4, 1], vec![3, 4, 1], vec![2, 3, 1, 1]] {
            let mut g = conv_graph(true);
            g.nodes.push(Node::new("Mul", "mul", &["c", "k"], &["y"]));
            let n = shape.iter().product();
            g.initializers.insert("k".into(), Tensor::from_vec(&shape, vec![2.0f32; n]).unwrap());
            g.outputs.push(vi("y", &[1, 3, 4, 4]));
            assert_eq!(fold_channel_affine(&mut g), 0, "{shape:?}");
        }
    }

    #[test]
    fn residual_and_relu_fuse_into_the_conv() {
        for op in ["Add", "Sum"] {
            let mut g = conv_graph(true);
            g.inputs.push(vi("r", &[1, 3, 4, 4]));
            g.nodes.push(Node::new(op, "add", &["r", "c"], &["s"]));
            g.nodes.push(Node::new("Relu", "relu", &["s"], &["y"]));
            g.outputs.push(vi("y", &[1, 3, 4, 4]));
            assert_eq!(fuse_conv_epilogues(&mut g), 1);
            assert_eq!(g.nodes.len(), 1);
            let n = &g.nodes[0];
            assert_eq!((n.domain.as_str(), n.op_type.as_str()), (DOMAIN, FUSED_CONV));
            assert_eq!(n.inputs, vec!["x", "w", "b", "r"]);
            assert_eq!(n.outputs, vec!["y"]);
            assert_eq!(n.attr_string("activation").unwrap().as_deref(), Some("relu"));
        }
    }

    #[test]
    fn silu_and_bias_free_residual_fuse() {
        let mut g = conv_graph(false);
        g.nodes.push(Node::new("Sigmoid", "sig", &["c"], &["z"]));
        g.nodes.push(Node::new("Mul", "mul", &["c", "z"], &["y"]));
        g.outputs.push(vi("y", &[1, 3, 4, 4]));
        assert_eq!(fuse_conv_epilogues(&mut g), 1);
        assert_eq!(g.nodes.len(), 1);
        assert_eq!(g.nodes[0].attr_string("activation").unwrap().as_deref(), Some("silu"));
        assert_eq!(g.nodes[0].inputs, vec!["x", "w"]);

        let mut g = conv_graph(false);
        g.inputs.push(vi("r", &[1, 3, 4, 4]));
        g.nodes.push(Node::new("Add", "add", &["c", "r"], &["y"]));
        g.outputs.push(vi("y", &[1, 3, 4, 4]));
        assert_eq!(fuse_conv_epilogues(&mut g), 1);
        assert_eq!(g.nodes[0].inputs, vec!["x", "w", "", "r"]);
        assert_eq!(g.nodes[0].attr_string("activation").unwrap(), None);
    }

    #[test]
    fn clip_to_six_fuses_as_relu6() {
        for (lo, hi, fused) in [(0.0f32, 6.0f32, true), (0.0, 5.0, false), (-1.0, 6.0, false)] {
            let mut g = conv_graph(true);
            g.nodes.push(Node::new("Clip", "clip", &["c", "lo", "hi"], &["y"]));
            g.initializers.insert("lo".into(), Tensor::scalar(lo));
            g.initializers.insert("hi".into(), Tensor::scalar(hi));
            g.outputs.push(vi("y", &[1, 3, 4, 4]));
            assert_eq!(fuse_conv_epilogues(&mut g), fused as usize, "{lo} {hi}");
            if fused {
                assert_eq!(g.nodes[0].attr_string("activation").unwrap().as_deref(), Some("relu6"));
            }
        }
        // Opset 6 form: bounds as attributes.
        let mut g = conv_graph(true);
        let clip = Node::new("Clip", "clip", &["c"], &["y"])
            .with_attr("min", Attr::Float(0.0))
            .with_attr("max", Attr::Float(6.0));
        g.nodes.push(clip);
        g.outputs.push(vi("y", &[1, 3, 4, 4]));
        assert_eq!(fuse_conv_epilogues(&mut g), 1);
    }

    #[test]
    fn broadcast_or_constant_adds_and_shared_outputs_stay() {
        // A bias-like constant, a broadcast operand, a Conv output read twice.
        let mut g = conv_graph(true);
        g.initializers.insert("k".into(), Tensor::from_vec(&[1, 3, 4, 4], vec![0f32; 48]).unwrap());
        g.nodes.push(Node::new("Add", "add", &["c", "k"], &["y"]));
        g.outputs.push(vi("y", &[1, 3, 4, 4]));
        assert_eq!(fuse_conv_epilogues(&mut g), 0);

        let mut g = conv_graph(true);
        g.inputs.push(vi("r", &[1, 3, 1, 1]));
        g.nodes.push(Node::new("Add", "add", &["c", "r"], &["y"]));
        g.outputs.push(vi("y", &[1, 3, 4, 4]));
        assert_eq!(fuse_conv_epilogues(&mut g), 0);

        let mut g = conv_graph(true);
        g.nodes.push(Node::new("Relu", "relu", &["c"], &["y"]));
        g.outputs.push(vi("y", &[1, 3, 4, 4]));
        g.outputs.push(vi("c", &[1, 3, 4, 4]));
        assert_eq!(fuse_conv_epilogues(&mut g), 0);
    }
}
