//! The Core ML provider: claims the regions of the graph the Neural Engine
//! takes (the rule table in `tessera_coreml::rules`), converts each region
//! into an ML Program with the `tessera-coreml` converter (fp16, the
//! channels-first Neural Engine layout for sequence models), and runs it
//! through Core ML with CPU + Neural Engine compute units on macOS. Values
//! cross into and out of a region only at its border.
//!
//! Off Apple hardware the same claim/convert/bind path runs with the MIL
//! interpreter as its back end ([`CoreMlProvider::interpreter`]), so the
//! partitioning and the conversion of real subgraphs are tested here; only
//! the thin `ffi` module is macOS-specific (rung 4: it compiles for
//! aarch64-apple-darwin; nothing here has run on a Mac).

#[cfg(target_os = "macos")]
pub mod ffi;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
#[cfg(target_os = "macos")]
use std::sync::Mutex;

use tessera_core::{DType, Error, Graph, Node, Result, Tensor, ValueInfo};
use tessera_coreml::interp::{self, Arr};
use tessera_coreml::rules::{neural_engine_verdict, HEAVY_OPS};
use tessera_coreml::{Compute, ConvertOptions, Package};

use crate::cpu::CpuProvider;
use crate::{
    claim_each, CompiledPartition, DevicePlan, ExecutionProvider, NodeVerdict, PlannedOp, RunOptions, Subgraph, Value,
};

/// Where a compiled region runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Core ML (macOS), CPU + Neural Engine.
    CoreMl,
    /// Tessera's MIL interpreter on the CPU: the reference for tests and
    /// for `tessera info`/`doctor` off Apple hardware.
    Interpreter,
}

#[derive(Debug)]
pub struct CoreMlProvider {
    backend: Backend,
}

impl CoreMlProvider {
    /// The Core ML back end, or why it is unavailable.
    pub fn new() -> std::result::Result<CoreMlProvider, String> {
        if cfg!(target_os = "macos") {
            Ok(CoreMlProvider { backend: Backend::CoreMl })
        } else {
            Err("Core ML is macOS-only (use `tessera convert --to coreml` to build packages here)".into())
        }
    }

    /// The same claims and conversions, run by the MIL interpreter.
    pub fn interpreter() -> CoreMlProvider {
        CoreMlProvider { backend: Backend::Interpreter }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }
}

/// Copies a region out of `graph` as a graph of its own.
pub fn region_graph(graph: &Graph, sub: &Subgraph) -> Result<Graph> {
    let info = |name: &str| -> Result<ValueInfo> {
        match (graph.dtype_of(name), graph.shape_of(name)) {
            (Some(dtype), Some(shape)) => Ok(ValueInfo { name: name.into(), dtype: Some(dtype), shape: Some(shape) }),
            _ => Err(Error::Other(format!("value '{name}' at a Core ML region border has no type"))),
        }
    };
    let nodes: Vec<Node> = sub.nodes.iter().map(|&i| graph.nodes[i].clone()).collect();
    let mut initializers = HashMap::new();
    for n in &nodes {
        for i in &n.inputs {
            if let Some(t) = graph.initializers.get(i) {
                initializers.insert(i.clone(), t.clone());
            }
        }
    }
    let mut value_info = HashMap::new();
    for n in &nodes {
        for v in n.inputs.iter().chain(&n.outputs) {
            if let Some(vi) = graph.value_info.get(v) {
                value_info.insert(v.clone(), vi.clone());
            }
        }
    }
    Ok(Graph {
        name: format!("{}_coreml", graph.name),
        nodes,
        inputs: sub.inputs.iter().map(|n| info(n)).collect::<Result<_>>()?,
        outputs: sub.outputs.iter().map(|n| info(n)).collect::<Result<_>>()?,
        initializers,
        value_info,
        opsets: graph.opsets.clone(),
    })
}

impl ExecutionProvider for CoreMlProvider {
    fn name(&self) -> &str {
        "coreml"
    }

    /// Eligible nodes are grouped into regions of consecutive nodes (in
    /// topological order); a region without a matrix product or
    /// convolution is declined, since the hop to Core ML would cost more
    /// than it saves.
    fn claim(&self, graph: &Graph, taken: &[bool]) -> Vec<NodeVerdict> {
        let mut verdicts = claim_each(graph, taken, |n| neural_engine_verdict(graph, n));
        let mut group = 0;
        let mut i = 0;
        while i < verdicts.len() {
            if !matches!(verdicts[i], NodeVerdict::Claim { .. }) {
                i += 1;
                continue;
            }
            let start = i;
            while i < verdicts.len() && matches!(verdicts[i], NodeVerdict::Claim { .. }) {
                i += 1;
            }
            let heavy = graph.nodes[start..i].iter().any(|n| HEAVY_OPS.contains(&n.op_type.as_str()));
            for v in &mut verdicts[start..i] {
                *v = if heavy {
                    NodeVerdict::Claim { group }
                } else {
                    NodeVerdict::Decline {
                        reason: format!(
                            "its Neural Engine region ({} nodes) has no MatMul/Gemm/Conv: not worth a Core ML call",
                            i - start
                        ),
                    }
                };
            }
            group += 1;
        }
        verdicts
    }

    fn compile(&self, graph: &Graph, sub: &Subgraph) -> Result<Box<dyn CompiledPartition>> {
        let region = region_graph(graph, sub)?;
        let cpu = CpuProvider::new();
        let eval = |g: &Graph, n: &Node, ins: &[Option<Tensor>]| cpu.eval_node(g, n, ins);
        // The Neural Engine's layout for sequence models; the interpreter
        // back end runs the same program a Mac would.
        let opts = ConvertOptions { compute: Compute::F16, ane_layout: true, ..Default::default() };
        let (pkg, _) = tessera_coreml::convert_graph(&region, &opts, &eval)?;
        let desc = pkg.model.description.clone().unwrap_or_default();
        let in_names: Vec<String> = desc.input.iter().map(|f| f.name.clone()).collect();
        let out_names: Vec<String> = desc.output.iter().map(|f| f.name.clone()).collect();
        let out_dtypes: Vec<DType> = region.outputs.iter().map(|o| o.dtype.unwrap_or(DType::F32)).collect();
        let (runner, plan) = match self.backend {
            Backend::Interpreter => {
                let plan = DevicePlan {
                    source: "the MIL interpreter, on the CPU (on a Mac, Core ML's compute plan says which operations the Neural Engine takes)".into(),
                    ops: op_labels(&pkg)
                        .into_iter()
                        .map(|(label, op_type)| PlannedOp { op_type, label, device: "cpu".into() })
                        .collect(),
                };
                (Runner::Interpreter(Box::new(interp::Prepared::new(&pkg, "main")?)), plan)
            }
            Backend::CoreMl => Runner::native(&pkg)?,
        };
        Ok(Box::new(CoreMlPartition { runner, in_names, out_names, out_dtypes, plan }))
    }
}

/// (label, operation type) of each non-const operation of `main`: the
/// label is the first output's name, or the operation's name without
/// outputs, as `MLComputePlan` labels them.
fn op_labels(pkg: &Package) -> Vec<(String, String)> {
    let Some(f) = pkg.model.ml_program.as_ref().and_then(|p| p.functions.get("main")) else { return vec![] };
    let Some(block) = f.block_specializations.get(&f.opset) else { return vec![] };
    block
        .operations
        .iter()
        .filter(|op| op.r#type != "const")
        .map(|op| {
            let label = op.outputs.first().map(|o| o.name.clone()).unwrap_or_else(|| {
                op.attributes.get("name").and_then(tessera_coreml::mil::string_of).unwrap_or_default().to_string()
            });
            (label, op.r#type.clone())
        })
        .collect()
}

/// A device plan from `(label, device)` pairs (Core ML's compute plan
/// speaks in operation labels), with each label's operation type from the
/// package.
pub fn label_plan(pkg: &Package, placed: &[(String, String)], source: &str) -> DevicePlan {
    let types: HashMap<String, String> = op_labels(pkg).into_iter().collect();
    DevicePlan {
        source: source.to_string(),
        ops: placed
            .iter()
            .map(|(label, device)| PlannedOp {
                op_type: types.get(label).cloned().unwrap_or_else(|| "?".into()),
                label: label.clone(),
                device: device.clone(),
            })
            .collect(),
    }
}

enum Runner {
    Interpreter(Box<interp::Prepared>),
    #[cfg(target_os = "macos")]
    Native(Mutex<ffi::CoreMlModel>),
}

impl Runner {
    #[cfg(target_os = "macos")]
    fn native(pkg: &Package) -> Result<(Runner, DevicePlan)> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tessera-coreml-{}-{}.mlpackage",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        tessera_coreml::write_package(pkg, &dir)?;
        let compiled = ffi::compile_package(&dir).map_err(Error::Other)?;
        let model = ffi::CoreMlModel::load(&compiled, ffi::ComputeUnits::CpuAndNeuralEngine).map_err(Error::Other)?;
        let plan = match ffi::neural_engine_ops(&compiled) {
            Ok(placed) => label_plan(pkg, &placed, "Core ML's compute plan (MLComputePlan)"),
            Err(e) => DevicePlan { source: format!("no compute plan: {e}"), ops: vec![] },
        };
        Ok((Runner::Native(Mutex::new(model)), plan))
    }

    #[cfg(not(target_os = "macos"))]
    fn native(_pkg: &Package) -> Result<(Runner, DevicePlan)> {
        Err(Error::Unsupported("Core ML is macOS-only".into()))
    }
}

struct CoreMlPartition {
    runner: Runner,
    in_names: Vec<String>,
    out_names: Vec<String>,
    out_dtypes: Vec<DType>,
    plan: DevicePlan,
}

fn from_f32(dtype: DType, shape: &[usize], v: &[f32]) -> Result<Tensor> {
    Tensor::from_f64(dtype, shape, &v.iter().map(|&x| x as f64).collect::<Vec<_>>())
}

impl CompiledPartition for CoreMlPartition {
    fn device_plan(&self) -> Option<&DevicePlan> {
        Some(&self.plan)
    }

    fn run(&self, inputs: Vec<Value>, _opts: &RunOptions) -> Result<Vec<Value>> {
        let tensors: Vec<Tensor> = inputs.into_iter().map(|v| v.into_host()).collect::<Result<_>>()?;
        if tensors.len() != self.in_names.len() {
            return Err(Error::Other(format!("Core ML region: {} inputs for {}", tensors.len(), self.in_names.len())));
        }
        // Outputs by name, each as (shape, values).
        let mut got: HashMap<String, (Vec<usize>, Vec<f32>)> = match &self.runner {
            Runner::Interpreter(prepared) => {
                let feeds: Vec<(String, Arr)> =
                    self.in_names.iter().cloned().zip(tensors.iter().map(Arr::from_tensor)).collect();
                prepared
                    .run(&feeds)?
                    .into_iter()
                    .map(|(n, a)| Ok((n, (a.shape.clone(), a.floats()?))))
                    .collect::<Result<_>>()?
            }
            #[cfg(target_os = "macos")]
            Runner::Native(model) => {
                // fp32 tensors are lent to Core ML as they are; the others
                // are converted to its interface types (fp32, int32).
                enum Buf<'a> {
                    F(std::borrow::Cow<'a, [f32]>),
                    I(Vec<i32>),
                }
                let bufs: Vec<Buf> = tensors
                    .iter()
                    .map(|t| {
                        let v = || t.to_f64_vec().into_iter();
                        Ok(match t.dtype() {
                            DType::F32 => Buf::F(std::borrow::Cow::Borrowed(t.as_slice::<f32>()?)),
                            d if d.is_float() => Buf::F(std::borrow::Cow::Owned(v().map(|x| x as f32).collect())),
                            _ => Buf::I(v().map(|x| x as i32).collect()),
                        })
                    })
                    .collect::<Result<_>>()?;
                let feeds: Vec<(&str, &[usize], ffi::InputData)> = self
                    .in_names
                    .iter()
                    .zip(&tensors)
                    .zip(&bufs)
                    .map(|((n, t), b)| {
                        let data = match b {
                            Buf::F(f) => ffi::InputData::F32(f),
                            Buf::I(i) => ffi::InputData::I32(i),
                        };
                        (n.as_str(), t.shape(), data)
                    })
                    .collect();
                let model = model.lock().map_err(|_| Error::Other("Core ML model lock poisoned".into()))?;
                model.predict(&feeds).map_err(Error::Other)?.into_iter().map(|(n, s, v)| (n, (s, v))).collect()
            }
        };
        self.out_names
            .iter()
            .zip(&self.out_dtypes)
            .map(|(n, &dt)| {
                let (shape, v) = got
                    .remove(n)
                    .ok_or_else(|| Error::Other(format!("the Core ML region returned no output '{n}'")))?;
                Ok(Value::Host(from_f32(dt, &shape, &v)?))
            })
            .collect()
    }
}
