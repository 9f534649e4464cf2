//! The CPU execution provider: claims every node it has a kernel for and
//! runs claimed subgraphs node by node, releasing each activation after its
//! last use so later nodes reuse the memory.

use std::collections::HashMap;
use std::sync::Arc;

use tessera_core::{Error, Graph, Node, Result, Tensor};

use super::registry::{BuildCtx, CpuOp, OpRegistry, RunCtx};
use crate::provider::{claim_each, CompiledPartition, ExecutionProvider, NodeVerdict, RunOptions, Subgraph, Value};

/// Ops whose bodies are subgraphs; not supported yet.
const CONTROL_FLOW: &[&str] = &["If", "Loop", "Scan", "SequenceMap"];

pub struct CpuProvider {
    registry: Arc<OpRegistry>,
}

impl Default for CpuProvider {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuProvider {
    pub fn new() -> Self {
        CpuProvider { registry: Arc::new(OpRegistry::with_all_ops()) }
    }

    pub fn registry(&self) -> &OpRegistry {
        &self.registry
    }

    /// Why the CPU provider cannot run `node`, or None if it can.
    pub fn decline_reason(&self, node: &Node) -> Option<String> {
        if CONTROL_FLOW.contains(&node.op_type.as_str()) && (node.domain.is_empty() || node.domain == "ai.onnx") {
            return Some(format!("control flow ({}) with subgraphs is not supported yet", node.op_type));
        }
        if !self.registry.supports(node) {
            let d = if node.domain.is_empty() { "ai.onnx".to_string() } else { node.domain.clone() };
            return Some(format!("no CPU kernel for {}:{}", d, node.op_type));
        }
        None
    }

    /// Builds one node into a runnable op (used by constant folding too).
    pub fn build_node(
        &self,
        graph: &Graph,
        node: &Node,
        constant: &dyn Fn(&str) -> Option<Tensor>,
    ) -> Result<Box<dyn CpuOp>> {
        if let Some(r) = self.decline_reason(node) {
            return Err(Error::Unsupported(format!("node '{}': {r}", node.name)));
        }
        let domain = if node.domain == "ai.onnx" { "" } else { node.domain.as_str() };
        let opset = graph.opsets.get(domain).copied().unwrap_or_else(|| graph.opset());
        let builder = self.registry.get(&node.domain, &node.op_type).expect("checked by decline_reason");
        builder(node, &BuildCtx { opset, constant }).map_err(|e| wrap_node_error(node, e))
    }

    /// Runs one node on host tensors: the evaluator behind constant folding.
    pub fn eval_node(&self, graph: &Graph, node: &Node, inputs: &[Option<Tensor>]) -> Result<Vec<Tensor>> {
        let consts: HashMap<&str, &Tensor> =
            node.inputs.iter().zip(inputs).filter_map(|(n, t)| t.as_ref().map(|t| (n.as_str(), t))).collect();
        let lookup = |n: &str| consts.get(n).map(|t| (*t).clone());
        let op = self.build_node(graph, node, &lookup)?;
        let refs: Vec<Option<&Tensor>> = inputs.iter().map(|t| t.as_ref()).collect();
        op.run(&refs, &mut RunCtx::default()).map_err(|e| wrap_node_error(node, e))
    }
}

/// Gives an error the node's name and op, unless it already has them.
pub fn wrap_node_error(node: &Node, e: Error) -> Error {
    match e {
        Error::Node { .. } | Error::Unsupported(_) => e,
        other => Error::node(node, other.to_string()),
    }
}

struct Step {
    op: Box<dyn CpuOp>,
    node: Node,
    inputs: Vec<Option<usize>>,
    outputs: Vec<Option<usize>>,
    /// Slots whose last reader is this step.
    frees: Vec<usize>,
}

pub struct CpuPartition {
    /// Provider name, for the profile.
    provider: &'static str,
    steps: Vec<Step>,
    n_slots: usize,
    constants: Vec<(usize, Tensor)>,
    input_slots: Vec<usize>,
    output_slots: Vec<usize>,
}

impl ExecutionProvider for CpuProvider {
    fn name(&self) -> &str {
        "cpu"
    }

    fn claim(&self, graph: &Graph, taken: &[bool]) -> Vec<NodeVerdict> {
        claim_each(graph, taken, |n| self.decline_reason(n).map_or(Ok(()), Err))
    }

    fn compile(&self, graph: &Graph, sub: &Subgraph) -> Result<Box<dyn CompiledPartition>> {
        Ok(Box::new(compile_partition("cpu", graph, sub, &|node, constant| self.build_node(graph, node, constant))?))
    }
}

/// Builds one node into a runnable op, given a lookup of constant values.
pub type NodeBuilder<'a> = dyn Fn(&Node, &dyn Fn(&str) -> Option<Tensor>) -> Result<Box<dyn CpuOp>> + 'a;

/// Compiles a subgraph of host-memory ops into a partition that runs them
/// in order and frees each value after its last reader. Shared by every
/// provider whose ops run on the CPU (cpu, amx).
pub fn compile_partition(
    provider: &'static str,
    graph: &Graph,
    sub: &Subgraph,
    build: &NodeBuilder,
) -> Result<CpuPartition> {
    let mut slot_of: HashMap<String, usize> = HashMap::new();
    let mut constants = Vec::new();
    let slot = |name: &str, slot_of: &mut HashMap<String, usize>| -> usize {
        let n = slot_of.len();
        *slot_of.entry(name.to_string()).or_insert(n)
    };
    let input_slots: Vec<usize> = sub.inputs.iter().map(|n| slot(n, &mut slot_of)).collect();
    let constant = |n: &str| graph.initializers.get(n).cloned();
    let mut steps = Vec::with_capacity(sub.nodes.len());
    for &ni in &sub.nodes {
        let node = &graph.nodes[ni];
        let op = build(node, &constant)?;
        let mut inputs = Vec::with_capacity(node.inputs.len());
        for name in &node.inputs {
            if name.is_empty() {
                inputs.push(None);
                continue;
            }
            let fresh = !slot_of.contains_key(name.as_str());
            let s = slot(name, &mut slot_of);
            if fresh {
                match graph.initializers.get(name) {
                    Some(t) => constants.push((s, t.clone())),
                    None => {
                        return Err(Error::InvalidModel(format!(
                            "node '{}' reads '{name}', which is not available to its partition",
                            node.name
                        )))
                    }
                }
            }
            inputs.push(Some(s));
        }
        let outputs = node.outputs.iter().map(|o| (!o.is_empty()).then(|| slot(o, &mut slot_of))).collect();
        steps.push(Step { op, node: node.clone(), inputs, outputs, frees: Vec::new() });
    }
    let mut output_slots = Vec::with_capacity(sub.outputs.len());
    for o in &sub.outputs {
        let fresh = !slot_of.contains_key(o.as_str());
        let s = slot(o, &mut slot_of);
        if fresh {
            match graph.initializers.get(o) {
                Some(t) => constants.push((s, t.clone())),
                None => return Err(Error::InvalidModel(format!("partition output '{o}' is never produced"))),
            }
        }
        output_slots.push(s);
    }
    // Liveness: a slot dies after its last reader unless it is an output.
    let n_slots = slot_of.len();
    let mut last_use: Vec<Option<usize>> = vec![None; n_slots];
    for (si, st) in steps.iter().enumerate() {
        for s in st.inputs.iter().flatten() {
            last_use[*s] = Some(si);
        }
        for s in st.outputs.iter().flatten() {
            if last_use[*s].is_none() {
                last_use[*s] = Some(si);
            }
        }
    }
    let keep: std::collections::HashSet<usize> =
        output_slots.iter().copied().chain(constants.iter().map(|(s, _)| *s)).collect();
    for (s, lu) in last_use.iter().enumerate() {
        if let Some(si) = lu {
            if !keep.contains(&s) {
                steps[*si].frees.push(s);
            }
        }
    }
    Ok(CpuPartition { provider, steps, n_slots, constants, input_slots, output_slots })
}

impl CompiledPartition for CpuPartition {
    fn run(&self, inputs: Vec<Value>, opts: &RunOptions) -> Result<Vec<Value>> {
        let body = || self.run_host(inputs);
        match opts.pool {
            Some(p) => p.install(body),
            None => body(),
        }
    }
}

impl CpuPartition {
    fn run_host(&self, inputs: Vec<Value>) -> Result<Vec<Value>> {
        if inputs.len() != self.input_slots.len() {
            return Err(Error::Input(format!(
                "partition expects {} inputs, got {}",
                self.input_slots.len(),
                inputs.len()
            )));
        }
        let mut values: Vec<Option<Tensor>> = vec![None; self.n_slots];
        for (s, t) in &self.constants {
            values[*s] = Some(t.clone());
        }
        for (s, v) in self.input_slots.iter().zip(inputs) {
            values[*s] = Some(v.into_host()?);
        }
        let mut ctx = RunCtx::default();
        let profiling = crate::profile::enabled();
        for st in &self.steps {
            let t0 = profiling.then(std::time::Instant::now);
            let outs = {
                let mut refs: Vec<Option<&Tensor>> = Vec::with_capacity(st.inputs.len());
                for s in &st.inputs {
                    refs.push(match s {
                        None => None,
                        Some(s) => Some(
                            values[*s]
                                .as_ref()
                                .ok_or_else(|| Error::node(&st.node, "an input was not computed before this node"))?,
                        ),
                    });
                }
                st.op.run(&refs, &mut ctx).map_err(|e| wrap_node_error(&st.node, e))?
            };
            if outs.len() < st.outputs.iter().filter(|o| o.is_some()).count() {
                return Err(Error::node(
                    &st.node,
                    format!("kernel produced {} outputs, the node has {}", outs.len(), st.outputs.len()),
                ));
            }
            if let Some(t0) = t0 {
                crate::profile::record(&format!("{}:{}", self.provider, st.node.op_type), t0.elapsed().as_secs_f64());
            }
            for (o, t) in st.outputs.iter().zip(outs) {
                if let Some(s) = o {
                    values[*s] = Some(t);
                }
            }
            for s in &st.frees {
                if let Some(t) = values[*s].take() {
                    ctx.release(t);
                }
            }
        }
        self.output_slots
            .iter()
            .map(|s| values[*s].clone().map(Value::Host).ok_or_else(|| Error::Other("partition output missing".into())))
            .collect()
    }
}
