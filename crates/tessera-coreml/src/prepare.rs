//! Makes an ONNX graph static before conversion: binds every symbolic
//! dimension, folds shape computations (`Shape`, `Size`, and whatever they
//! feed) into constants, folds BatchNormalization into the convolution
//! before it, and fuses LayerNorm and GELU patterns, so that each MIL
//! operation is emitted with concrete types.

use std::collections::HashMap;

use tessera_core::passes::{dce, fold, fuse_gelu, fuse_layernorm, Evaluator};
use tessera_core::{Dim, Error, Graph, Result, Tensor};

/// What preparation changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrepareReport {
    pub shapes_folded: usize,
    pub constants_folded: usize,
    pub batchnorms_folded: usize,
    pub layernorms_fused: usize,
    pub gelus_fused: usize,
}

/// Binds the symbolic dims of the graph inputs; every input must end fully
/// known, else the error lists what is missing.
pub fn bind_dims(graph: &mut Graph, dims: &HashMap<String, usize>) -> Result<()> {
    let mut missing = Vec::new();
    for i in &mut graph.inputs {
        let Some(shape) = &mut i.shape else {
            return Err(Error::Unsupported(format!("input '{}' has no declared shape", i.name)));
        };
        for d in shape.iter_mut() {
            match d {
                Dim::Sym(s) => match dims.get(s.as_str()) {
                    Some(&v) => *d = Dim::Known(v),
                    None => missing.push(s.clone()),
                },
                Dim::Unknown => missing.push(format!("(unnamed dim of '{}')", i.name)),
                Dim::Known(_) => {}
            }
        }
    }
    if !missing.is_empty() {
        missing.sort();
        missing.dedup();
        return Err(Error::Input(format!(
            "conversion needs a value for each symbolic dimension: {} (give --dim NAME=VALUE)",
            missing.join(", ")
        )));
    }
    Ok(())
}

/// Replaces `Shape`/`Size` of statically shaped values by constants.
fn fold_shape_ops(graph: &mut Graph) -> Result<usize> {
    tessera_core::shape_inference::infer(graph)?;
    let mut n = 0;
    let mut i = 0;
    while i < graph.nodes.len() {
        let node = &graph.nodes[i];
        let standard = node.domain.is_empty() || node.domain == "ai.onnx";
        if standard && (node.op_type == "Shape" || node.op_type == "Size") {
            if let Some(shape) = node.inputs.first().and_then(|x| graph.concrete_shape_of(x)) {
                let t = if node.op_type == "Size" {
                    Tensor::scalar(shape.iter().product::<usize>() as i64)
                } else {
                    let r = shape.len() as i64;
                    let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                    let start = clamp(node.attr_int_or("start", 0)?);
                    let end = clamp(node.attr_int_or("end", r)?).max(start);
                    let v: Vec<i64> = shape[start..end].iter().map(|&d| d as i64).collect();
                    Tensor::from_vec(&[v.len()], v)?
                };
                let node = graph.nodes.remove(i);
                graph.initializers.insert(node.outputs[0].clone(), t);
                n += 1;
                continue;
            }
        }
        i += 1;
    }
    Ok(n)
}

/// Folds an inference BatchNormalization into the Conv that alone feeds it.
pub fn fold_batchnorm_into_conv(graph: &mut Graph) -> Result<usize> {
    let mut folded = 0;
    loop {
        let uses = graph.use_counts();
        let producers = graph.producers();
        let outputs: Vec<&str> = graph.outputs.iter().map(|o| o.name.as_str()).collect();
        let mut hit = None;
        for (bi, bn) in graph.nodes.iter().enumerate() {
            if bn.op_type != "BatchNormalization" || bn.outputs.len() != 1 || !bn.domain.is_empty() {
                continue;
            }
            let Some(&ci) = producers.get(&bn.inputs[0]) else { continue };
            let conv = &graph.nodes[ci];
            if conv.op_type != "Conv"
                || uses.get(&conv.outputs[0]).copied() != Some(1)
                || outputs.contains(&conv.outputs[0].as_str())
            {
                continue;
            }
            let consts = bn.inputs[1..].iter().all(|n| graph.initializers.contains_key(n))
                && graph.initializers.contains_key(&conv.inputs[1])
                && conv.inputs.get(2).is_none_or(|b| b.is_empty() || graph.initializers.contains_key(b));
            if consts && bn.inputs.len() == 5 {
                hit = Some((bi, ci));
                break;
            }
        }
        let Some((bi, ci)) = hit else { break };
        let bn = graph.nodes[bi].clone();
        let eps = bn.attr_float_or("epsilon", 1e-5)? as f64;
        let get = |n: &str| graph.initializers[n].to_f64_vec();
        let (scale, beta, mean, var) = (get(&bn.inputs[1]), get(&bn.inputs[2]), get(&bn.inputs[3]), get(&bn.inputs[4]));
        let conv = graph.nodes[ci].clone();
        let w = &graph.initializers[&conv.inputs[1]];
        let oc = w.shape()[0];
        if [scale.len(), beta.len(), mean.len(), var.len()].iter().any(|&l| l != oc) {
            return Err(Error::node(&bn, format!("parameters do not have the conv's {oc} output channels")));
        }
        let per = w.numel() / oc.max(1);
        let mut wv = w.to_f64_vec();
        let mut bv = match conv.inputs.get(2).filter(|b| !b.is_empty()) {
            Some(b) => graph.initializers[b].to_f64_vec(),
            None => vec![0.0; oc],
        };
        for o in 0..oc {
            let k = scale[o] / (var[o] + eps).sqrt();
            wv[o * per..(o + 1) * per].iter_mut().for_each(|x| *x *= k);
            bv[o] = (bv[o] - mean[o]) * k + beta[o];
        }
        let wdt = w.dtype();
        let wshape = w.shape().to_vec();
        let wname = graph.fresh_name(&format!("{}_bnfolded_w", conv.name));
        let bname = graph.fresh_name(&format!("{}_bnfolded_b", conv.name));
        graph.initializers.insert(wname.clone(), Tensor::from_f64(wdt, &wshape, &wv)?);
        graph.initializers.insert(bname.clone(), Tensor::from_f64(wdt, &[oc], &bv)?);
        let c = &mut graph.nodes[ci];
        c.inputs.resize(3, String::new());
        c.inputs[1] = wname;
        c.inputs[2] = bname;
        c.outputs[0] = bn.outputs[0].clone();
        graph.nodes.remove(bi);
        folded += 1;
    }
    Ok(folded)
}

/// Folds shape ops and the constants they decide until nothing changes;
/// returns how many of each were folded.
fn fold_to_fixpoint(graph: &mut Graph, eval: &Evaluator) -> Result<(usize, usize)> {
    let (mut shapes, mut consts) = (0, 0);
    for _ in 0..16 {
        let s = fold_shape_ops(graph)?;
        let c = fold::fold_constants(graph, eval)?;
        shapes += s;
        consts += c;
        if s + c == 0 {
            break;
        }
    }
    Ok((shapes, consts))
}

/// Binds the dims given (others stay symbolic) and, when every input is
/// then static, folds shape computations and constants to a fixpoint.
/// Returns whether the graph is static. For sessions that place regions on
/// Core ML, which needs static shapes.
pub fn make_static(graph: &mut Graph, dims: &HashMap<String, usize>, eval: &Evaluator) -> Result<bool> {
    for i in &mut graph.inputs {
        for d in i.shape.iter_mut().flatten() {
            if let Dim::Sym(s) = d {
                if let Some(&v) = dims.get(s.as_str()) {
                    *d = Dim::Known(v);
                }
            }
        }
    }
    let all_static = graph.inputs.iter().all(|i| i.concrete_shape().is_some());
    if all_static {
        fold_to_fixpoint(graph, eval)?;
        dce::eliminate_dead_nodes(graph);
        graph.toposort()?;
        graph.value_info.clear();
    }
    Ok(all_static)
}

/// Everything above, to a fixpoint, then shape inference.
pub fn prepare(graph: &mut Graph, dims: &HashMap<String, usize>, eval: &Evaluator) -> Result<PrepareReport> {
    graph.toposort()?;
    bind_dims(graph, dims)?;
    let mut r = PrepareReport::default();
    (r.shapes_folded, r.constants_folded) = fold_to_fixpoint(graph, eval)?;
    dce::eliminate_dead_nodes(graph);
    r.batchnorms_folded = fold_batchnorm_into_conv(graph)?;
    r.layernorms_fused = fuse_layernorm::fuse_layer_norm(graph);
    r.gelus_fused = fuse_gelu::fuse_gelu(graph);
    dce::eliminate_dead_nodes(graph);
    graph.toposort()?;
    graph.value_info.clear();
    tessera_core::shape_inference::infer(graph)?;
    Ok(r)
}
