//! The static memory planner. Given concrete shapes, every activation gets
//! an offset in one arena; two activations share bytes only if their
//! lifetimes (first write to last read, in node order) do not overlap.
//! Placement is greedy by size, largest first, at the lowest offset that
//! fits between already placed, time-overlapping blocks.

use std::collections::HashMap;

use crate::passes::Evaluator;
use crate::{Graph, Result};

const ALIGN: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    pub value: String,
    pub bytes: usize,
    /// Node index that produces it.
    pub first: usize,
    /// Last node index that reads it (or the end, for graph outputs).
    pub last: usize,
    pub offset: usize,
}

#[derive(Clone, Debug, Default)]
pub struct MemoryPlan {
    pub blocks: Vec<Block>,
    /// Arena size: the planned peak of activation memory.
    pub peak_bytes: usize,
    /// What allocating every activation separately would take.
    pub unplanned_bytes: usize,
    /// Activations whose size is data-dependent (NonZero, ...): allocated at
    /// run time outside the plan.
    pub dynamic_values: Vec<String>,
    /// Bytes of weights (initializers), for reference.
    pub weight_bytes: usize,
}

pub fn plan(graph: &Graph, dims: &HashMap<String, usize>) -> Result<MemoryPlan> {
    plan_with(graph, dims, None)
}

pub fn plan_with(graph: &Graph, dims: &HashMap<String, usize>, eval: Option<&Evaluator>) -> Result<MemoryPlan> {
    let info = crate::shape_inference::infer_with(graph, dims, eval)?;
    let end = graph.nodes.len();
    let mut first: HashMap<&str, usize> = HashMap::new();
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (i, n) in graph.nodes.iter().enumerate() {
        for o in n.outputs.iter().filter(|s| !s.is_empty()) {
            first.insert(o, i);
            last.entry(o).or_insert(i);
        }
        for inp in n.inputs.iter().filter(|s| !s.is_empty()) {
            if first.contains_key(inp.as_str()) {
                last.insert(inp, i);
            }
        }
    }
    for o in &graph.outputs {
        if first.contains_key(o.name.as_str()) {
            last.insert(&o.name, end);
        }
    }
    let mut blocks = Vec::new();
    let mut dynamic_values = Vec::new();
    for n in &graph.nodes {
        for o in n.outputs.iter().filter(|s| !s.is_empty()) {
            let vi = info.get(o);
            match vi.and_then(|v| Some((v.dtype?, v.concrete_shape()?))) {
                Some((dt, shape)) => {
                    let bytes = crate::tensor::checked_numel(&shape)?.saturating_mul(dt.size());
                    blocks.push(Block {
                        value: o.clone(),
                        bytes: bytes.div_ceil(ALIGN) * ALIGN,
                        first: first[o.as_str()],
                        last: last[o.as_str()],
                        offset: 0,
                    });
                }
                None => dynamic_values.push(o.clone()),
            }
        }
    }
    let unplanned_bytes = blocks.iter().map(|b| b.bytes).sum();
    let peak_bytes = assign_offsets(&mut blocks);
    let weight_bytes = graph.initializers.values().map(|t| t.byte_len()).sum();
    Ok(MemoryPlan { blocks, peak_bytes, unplanned_bytes, dynamic_values, weight_bytes })
}

/// Greedy-by-size placement; returns the arena size.
pub fn assign_offsets(blocks: &mut [Block]) -> usize {
    let mut order: Vec<usize> = (0..blocks.len()).collect();
    order.sort_by(|&a, &b| blocks[b].bytes.cmp(&blocks[a].bytes).then(a.cmp(&b)));
    let mut placed: Vec<usize> = Vec::new();
    let mut peak = 0;
    for i in order {
        let (f, l, size) = (blocks[i].first, blocks[i].last, blocks[i].bytes);
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| blocks[j].first <= l && f <= blocks[j].last)
            .map(|&j| (blocks[j].offset, blocks[j].offset + blocks[j].bytes))
            .collect();
        busy.sort();
        let mut off = 0;
        for (s, e) in busy {
            if off + size <= s {
                break;
            }
            off = off.max(e);
        }
        blocks[i].offset = off;
        peak = peak.max(off + size);
        placed.push(i);
    }
    peak
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn blk(first: usize, last: usize, bytes: usize) -> Block {
        Block { value: String::new(), bytes, first, last, offset: 0 }
    }

    #[test]
    fn chain_reuses_memory() {
        // a -> b -> c -> d, each 1 KiB: at most two live at once.
        let mut b = vec![blk(0, 1, 1024), blk(1, 2, 1024), blk(2, 3, 1024), blk(3, 4, 1024)];
        assert_eq!(assign_offsets(&mut b), 2048);
    }

    proptest! {
        #[test]
        fn overlapping_lifetimes_never_share_bytes(spec in proptest::collection::vec((0usize..20, 0usize..6, 1usize..10), 1..40)) {
            let mut b: Vec<Block> = spec.iter().map(|&(f, len, kb)| blk(f, f + len, kb * 64)).collect();
            let peak = assign_offsets(&mut b);
            for i in 0..b.len() {
                prop_assert!(b[i].offset + b[i].bytes <= peak);
                for j in 0..i {
                    let time = b[i].first <= b[j].last && b[j].first <= b[i].last;
                    let space = b[i].offset < b[j].offset + b[j].bytes && b[j].offset < b[i].offset + b[i].bytes;
                    prop_assert!(!(time && space), "blocks {} and {} collide", i, j);
                }
            }
            // Never worse than no reuse; at least the largest live set.
            prop_assert!(peak <= b.iter().map(|x| x.bytes).sum::<usize>());
        }
    }
}
