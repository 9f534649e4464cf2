//! The execution-provider contract.
//!
//! Modelled on ONNX Runtime's: the session shows each provider the graph,
//! the provider answers with the nodes it claims (grouped into subgraphs it
//! wants to compile as a unit) and, for nodes it declines, why. Claimed
//! subgraphs are compiled into [`CompiledPartition`]s. A provider with its
//! own memory (a GPU) returns [`Value::Device`] values; the session inserts
//! copies only where a value crosses from one memory domain to another.

use std::collections::HashMap;
use std::sync::Arc;

use tessera_core::{DType, Graph, Result, Tensor};

/// Where a provider's tensors live.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MemoryDomain {
    /// Ordinary host memory (also Apple's unified memory seen from the CPU).
    Host,
    /// Memory only the named device can address directly.
    Device(String),
}

/// A tensor living in a provider's own memory.
pub trait DeviceTensor: Send + Sync + std::fmt::Debug {
    fn dtype(&self) -> DType;
    fn shape(&self) -> &[usize];
    fn domain(&self) -> MemoryDomain;
    /// Copies the tensor back to host memory.
    fn to_host(&self) -> Result<Tensor>;
}

/// A value flowing between partitions.
#[derive(Clone, Debug)]
pub enum Value {
    Host(Tensor),
    Device(Arc<dyn DeviceTensor>),
}

impl Value {
    pub fn domain(&self) -> MemoryDomain {
        match self {
            Value::Host(_) => MemoryDomain::Host,
            Value::Device(d) => d.domain(),
        }
    }
    pub fn into_host(self) -> Result<Tensor> {
        match self {
            Value::Host(t) => Ok(t),
            Value::Device(d) => d.to_host(),
        }
    }
}

/// A provider's answer about one node.
#[derive(Clone, Debug)]
pub enum NodeVerdict {
    /// The provider can run the node; `group` numbers the subgraph it
    /// belongs to (nodes with one group id are compiled together).
    Claim { group: usize },
    /// The provider declines; the reason is shown by `tessera info`.
    Decline { reason: String },
}

/// The verdicts of a provider that claims nodes one at a time, all in
/// group 0: nodes already `taken` are declined, the others claimed when
/// `check` accepts them and declined with its reason otherwise.
pub fn claim_each(
    graph: &tessera_core::Graph,
    taken: &[bool],
    check: impl Fn(&tessera_core::Node) -> std::result::Result<(), String>,
) -> Vec<NodeVerdict> {
    graph
        .nodes
        .iter()
        .zip(taken)
        .map(|(n, &t)| {
            if t {
                return NodeVerdict::Decline { reason: "taken by another provider".into() };
            }
            match check(n) {
                Ok(()) => NodeVerdict::Claim { group: 0 },
                Err(reason) => NodeVerdict::Decline { reason },
            }
        })
        .collect()
}

/// A subgraph handed to a provider for compilation: node indices of the
/// session's graph, in topological order, plus the values crossing its border.
#[derive(Clone, Debug)]
pub struct Subgraph {
    pub nodes: Vec<usize>,
    /// Values read by the subgraph but produced outside it (or graph inputs
    /// and non-constant values). Constants are read from the graph directly.
    pub inputs: Vec<String>,
    /// Values produced inside and read outside (or graph outputs).
    pub outputs: Vec<String>,
}

/// Everything a compiled partition needs at run time.
pub struct RunOptions<'a> {
    pub pool: Option<&'a rayon::ThreadPool>,
}

pub trait CompiledPartition: Send + Sync {
    /// Runs the partition; `inputs` follow `Subgraph::inputs`, the result
    /// follows `Subgraph::outputs`.
    fn run(&self, inputs: Vec<Value>, opts: &RunOptions) -> Result<Vec<Value>>;
    /// Bytes of activation memory the partition's plan needs at its peak,
    /// when known.
    fn planned_peak_bytes(&self) -> Option<usize> {
        None
    }
    /// Where the back end placed the partition's operations, for back ends
    /// that decide that themselves (Core ML).
    fn device_plan(&self) -> Option<&DevicePlan> {
        None
    }
}

/// The devices a back end chose for a compiled partition's operations.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DevicePlan {
    /// Who decided, or why nothing is known.
    pub source: String,
    /// One entry per operation.
    pub ops: Vec<PlannedOp>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PlannedOp {
    pub op_type: String,
    /// The operation's first output name.
    pub label: String,
    /// "ane", "gpu" or "cpu".
    pub device: String,
}

impl DevicePlan {
    /// Operation counts per device.
    pub fn by_device(&self) -> std::collections::BTreeMap<String, usize> {
        let mut m = std::collections::BTreeMap::new();
        for o in &self.ops {
            *m.entry(o.device.clone()).or_default() += 1;
        }
        m
    }

    /// "ane 40, cpu 2": operation counts per device, for one line of text.
    pub fn counts_text(&self) -> String {
        self.by_device().iter().map(|(d, c)| format!("{d} {c}")).collect::<Vec<_>>().join(", ")
    }

    /// Operation types placed on `device`, with counts, most frequent first.
    pub fn op_types_on(&self, device: &str) -> Vec<(String, usize)> {
        let mut m: HashMap<String, usize> = HashMap::new();
        for o in self.ops.iter().filter(|o| o.device == device) {
            *m.entry(o.op_type.clone()).or_default() += 1;
        }
        let mut v: Vec<(String, usize)> = m.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }
}

pub trait ExecutionProvider: Send + Sync {
    /// Short name: "cpu", "amx", "gpu", "coreml", ...
    fn name(&self) -> &str;

    fn memory_domain(&self) -> MemoryDomain {
        MemoryDomain::Host
    }

    /// One verdict per node of `graph` (same order). Nodes already assigned
    /// to an earlier provider are passed in `taken` and must be declined.
    fn claim(&self, graph: &Graph, taken: &[bool]) -> Vec<NodeVerdict>;

    /// Compiles one claimed subgraph.
    fn compile(&self, graph: &Graph, sub: &Subgraph) -> Result<Box<dyn CompiledPartition>>;

    /// Moves a value into this provider's memory domain (identity for host
    /// providers given host values).
    fn import(&self, v: Value) -> Result<Value> {
        match self.memory_domain() {
            MemoryDomain::Host => Ok(Value::Host(v.into_host()?)),
            MemoryDomain::Device(d) => {
                Err(tessera_core::Error::Unsupported(format!("provider '{}' cannot import into {d}", self.name())))
            }
        }
    }
}
