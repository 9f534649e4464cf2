//! A decoder's KV cache as Core ML state (iOS 18 / macOS 15).
//!
//! ONNX decoders exported with a cache take `past` tensors and return
//! `present = Concat(past, new)` along the sequence axis. The converted
//! model keeps each cache in a state of fixed capacity `N` (the Neural
//! Engine compiles static shapes only) holding the **last** `N` positions,
//! right-aligned: a call with `S` new tokens reads the state, drops its
//! first `S` positions, appends the new ones and writes it back. That is
//! the ONNX graph evaluated with a past of exactly `N - S` positions, so
//! every shape in the program is static and the graph's own causal-mask
//! slicing (rows `[total - S, total)`) stays right. Slots not yet filled
//! hold zeros and are excluded by the model's `attention_mask`, whose
//! total-length dim is `N`: zeros on the left for empty slots (left
//! padding), and `position_ids` carry the true positions. The cost is one
//! shift of the cache per call; a ring buffer would avoid it but needs a
//! dynamic write offset and a rotated causal mask, which the ONNX graph
//! does not express.

use std::collections::HashMap;

use tessera_core::{Dim, Error, Graph, Result};

/// One cache: graph input `past`, graph output `present`, joined on `axis`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvState {
    pub past: String,
    pub present: String,
    pub axis: usize,
    /// The past's symbolic length (bound to capacity minus new tokens).
    pub past_dim: String,
}

/// Finds the `present = Concat(past, ...)` pairs: a graph output made by a
/// Concat whose first operand is a graph input of the same rank, symbolic
/// along the concat axis.
pub fn find_kv_states(g: &Graph) -> Result<Vec<KvState>> {
    let mut out = Vec::new();
    for o in &g.outputs {
        let Some(n) = g.nodes.iter().find(|n| n.outputs.first() == Some(&o.name)) else { continue };
        if n.op_type != "Concat" || !(n.domain.is_empty() || n.domain == "ai.onnx") {
            continue;
        }
        let Some(past) = n.inputs.first() else { continue };
        let Some(inp) = g.inputs.iter().find(|i| &i.name == past) else { continue };
        if g.initializers.contains_key(past) {
            continue;
        }
        // Only float caches: a state holds fp16.
        if !inp.dtype.is_some_and(|d| d.is_float()) {
            continue;
        }
        let Some(shape) = &inp.shape else { continue };
        let r = shape.len() as i64;
        let mut axis = n.attr_int_or("axis", 0)?;
        if axis < 0 {
            axis += r;
        }
        if !(0..r).contains(&axis) {
            return Err(Error::node(n, format!("concat axis {axis} out of range for rank {r}")));
        }
        let Dim::Sym(p) = &shape[axis as usize] else { continue };
        out.push(KvState { past: past.clone(), present: o.name.clone(), axis: axis as usize, past_dim: p.clone() });
    }
    Ok(out)
}

/// Binds each cache's past length so that `past + new = capacity`. The new
/// entries' length comes from shape inference with every other dim bound;
/// caches sharing a past dim append the same length, so one cache whose
/// new entries are static (typically the first layer's; later layers'
/// shapes depend on the mask slicing, resolved only by folding) is enough.
pub fn bind_past_dims(
    g: &Graph,
    states: &[KvState],
    dims: &HashMap<String, usize>,
    capacity: usize,
) -> Result<HashMap<String, usize>> {
    let mut probe = g.clone();
    for i in &mut probe.inputs {
        for d in i.shape.iter_mut().flatten() {
            if let Dim::Sym(s) = d {
                if let Some(&v) = dims.get(s.as_str()) {
                    *d = Dim::Known(v);
                }
            }
        }
    }
    tessera_core::shape_inference::infer(&mut probe)?;
    let mut appended: HashMap<&str, (usize, &str)> = HashMap::new();
    for s in states {
        let n = probe
            .nodes
            .iter()
            .find(|n| n.outputs.first() == Some(&s.present))
            .ok_or_else(|| Error::Other(format!("no producer of '{}'", s.present)))?;
        let mut new_len = Some(0usize);
        for x in n.inputs.iter().skip(1).filter(|x| !x.is_empty()) {
            new_len = match (new_len, probe.shape_of(x).and_then(|sh| sh.get(s.axis).cloned())) {
                (Some(acc), Some(Dim::Known(k))) => Some(acc + k),
                _ => None,
            };
        }
        let Some(new_len) = new_len else { continue };
        match appended.get(s.past_dim.as_str()) {
            Some(&(other, by)) if other != new_len => {
                return Err(Error::Input(format!(
                    "--stateful-kv: caches sharing dim '{}' append different lengths ({other} to '{by}', {new_len} to '{}')",
                    s.past_dim, s.present
                )))
            }
            _ => {
                appended.insert(&s.past_dim, (new_len, &s.present));
            }
        }
    }
    let mut bound = dims.clone();
    for s in states {
        let Some(&(new_len, _)) = appended.get(s.past_dim.as_str()) else {
            return Err(Error::Input(format!(
                "--stateful-kv: the new entries of '{}' have no static length on axis {} (bind the sequence dim with --dim or --seq-lens)",
                s.present, s.axis
            )));
        };
        if new_len == 0 || new_len >= capacity {
            return Err(Error::Input(format!(
                "--stateful-kv: '{}' appends {new_len} entries per call; the capacity ({capacity}) must be larger",
                s.present
            )));
        }
        let past = capacity - new_len;
        if let Some(&v) = dims.get(&s.past_dim) {
            if v != past {
                return Err(Error::Input(format!(
                    "--stateful-kv: --dim {}={v} contradicts the capacity {capacity} minus {new_len} new entries",
                    s.past_dim
                )));
            }
        }
        bound.insert(s.past_dim.clone(), past);
    }
    Ok(bound)
}
