//! The partitioner: every node goes to the first provider (in priority
//! order) that claims it; consecutive nodes of one provider and claim group
//! form a partition, and values cross partitions only at their borders.

use std::collections::{HashMap, HashSet};

use tessera_core::{Error, Graph, Result};
use tessera_providers::{ExecutionProvider, NodeVerdict, Subgraph};

/// Which provider runs a node, and why.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Assignment {
    pub provider: usize,
    pub group: usize,
    /// Human-readable: declines of higher-priority providers, then the claim.
    pub reason: String,
}

/// Assigns every node, or fails naming a node nobody can run.
pub fn assign(graph: &Graph, providers: &[&dyn ExecutionProvider]) -> Result<Vec<Assignment>> {
    let n = graph.nodes.len();
    let mut taken = vec![false; n];
    let mut result: Vec<Option<Assignment>> = vec![None; n];
    let mut why: Vec<Vec<String>> = vec![Vec::new(); n];
    for (pi, p) in providers.iter().enumerate() {
        let verdicts = p.claim(graph, &taken);
        if verdicts.len() != n {
            return Err(Error::Other(format!(
                "provider '{}' answered {} verdicts for {n} nodes",
                p.name(),
                verdicts.len()
            )));
        }
        for (ni, v) in verdicts.into_iter().enumerate() {
            if taken[ni] {
                continue;
            }
            match v {
                NodeVerdict::Claim { group } => {
                    taken[ni] = true;
                    let mut reason = why[ni].join("; ");
                    if !reason.is_empty() {
                        reason.push_str("; ");
                    }
                    reason.push_str(&format!("{} claims it", p.name()));
                    result[ni] = Some(Assignment { provider: pi, group, reason });
                }
                NodeVerdict::Decline { reason } => why[ni].push(format!("{} declines: {reason}", p.name())),
            }
        }
    }
    result
        .into_iter()
        .enumerate()
        .map(|(ni, a)| {
            a.ok_or_else(|| {
                let node = &graph.nodes[ni];
                Error::Unsupported(format!("node '{}' ({}): {}", node.name, node.op_type, why[ni].join("; ")))
            })
        })
        .collect()
}

/// A partition: one provider's contiguous run of nodes.
#[derive(Clone, Debug)]
pub struct Partition {
    pub provider: usize,
    pub sub: Subgraph,
}

/// Cuts the topologically ordered node list wherever the provider or claim
/// group changes, and computes each partition's border values.
pub fn split(graph: &Graph, assignment: &[Assignment]) -> Vec<Partition> {
    let mut parts: Vec<(usize, usize, Vec<usize>)> = Vec::new();
    for (ni, a) in assignment.iter().enumerate() {
        match parts.last_mut() {
            Some((p, g, nodes)) if *p == a.provider && *g == a.group => nodes.push(ni),
            _ => parts.push((a.provider, a.group, vec![ni])),
        }
    }
    let mut part_of = vec![0usize; graph.nodes.len()];
    for (pi, (_, _, nodes)) in parts.iter().enumerate() {
        for &n in nodes {
            part_of[n] = pi;
        }
    }
    let producers = graph.producers();
    let graph_outputs: HashSet<&str> = graph.outputs.iter().map(|o| o.name.as_str()).collect();
    // Values each partition reads from outside itself.
    let mut inputs: Vec<Vec<String>> = vec![Vec::new(); parts.len()];
    let mut exported: HashMap<usize, Vec<String>> = HashMap::new();
    for (pi, (_, _, nodes)) in parts.iter().enumerate() {
        let mut seen = HashSet::new();
        for &ni in nodes {
            for inp in graph.nodes[ni].inputs.iter().filter(|s| !s.is_empty()) {
                if graph.initializers.contains_key(inp) {
                    continue;
                }
                let inside = producers.get(inp).is_some_and(|&p| part_of[p] == pi);
                if !inside && seen.insert(inp.clone()) {
                    inputs[pi].push(inp.clone());
                    if let Some(&p) = producers.get(inp) {
                        let e = exported.entry(part_of[p]).or_default();
                        if !e.contains(inp) {
                            e.push(inp.clone());
                        }
                    }
                }
            }
        }
    }
    parts
        .into_iter()
        .enumerate()
        .map(|(pi, (provider, _, nodes))| {
            let mut outputs = exported.remove(&pi).unwrap_or_default();
            for &ni in &nodes {
                for o in &graph.nodes[ni].outputs {
                    if graph_outputs.contains(o.as_str()) && !outputs.contains(o) {
                        outputs.push(o.clone());
                    }
                }
            }
            Partition { provider, sub: Subgraph { nodes, inputs: std::mem::take(&mut inputs[pi]), outputs } }
        })
        .collect()
}
