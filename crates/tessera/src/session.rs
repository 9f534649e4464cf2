//! The Session API: load → optimize → infer shapes → partition → compile →
//! run.

use std::collections::HashMap;
use std::path::Path;

use tessera_core::passes::{self, PassReport};
use tessera_core::plan::MemoryPlan;
use tessera_core::{Dim, Error, Graph, Result, Tensor, ValueInfo};
use tessera_providers::accelerate::AccelerateProvider;
use tessera_providers::amx::sme::SmeProvider;
use tessera_providers::amx::AmxProvider;
use tessera_providers::coreml::CoreMlProvider;
use tessera_providers::cpu::CpuProvider;
use tessera_providers::{CompiledPartition, ExecutionProvider, Precision, RunOptions, Value};

use crate::partition::{self, Assignment, Partition};

/// How a session is built.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Worker threads for kernels; 0 means one per core.
    pub threads: usize,
    /// Values for symbolic dimensions (`batch`, `seq`, ...), used for the
    /// memory plan and to check inputs.
    pub dims: HashMap<String, usize>,
    /// Run the graph optimizer (constant folding, dead-node elimination,
    /// fusions).
    pub optimize: bool,
    /// Providers to use in priority order; "auto" picks all available.
    /// The CPU provider is always appended as the fallback.
    pub providers: Vec<String>,
    /// What matrix products may trade for speed (default: fp32-accurate).
    pub precision: Precision,
    /// Hardware paths to leave unused for this session ("amx", "avx512"), on top of
    /// the process-wide `TESSERA_DISABLE` / `--disable` switch.
    pub disable: Vec<String>,
    /// While a run is in flight, keep the workers that have nothing to do
    /// polling for work instead of sleeping (as ONNX Runtime's and OpenMP's
    /// thread pools do by default). A sleeping worker is woken through the
    /// kernel for each parallel kernel, which in a virtual machine costs
    /// tens of microseconds, and a transformer runs hundreds of parallel
    /// kernels per inference. Off: idle workers sleep (less energy between
    /// kernels, more latency). Workers go back to sleep when the run ends.
    pub spin: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            threads: 0,
            dims: HashMap::new(),
            optimize: true,
            providers: vec!["auto".into()],
            precision: Precision::default(),
            disable: Vec::new(),
            spin: true,
        }
    }
}

/// Where one node runs and why (for `tessera info`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct NodeAssignment {
    pub node: String,
    pub op_type: String,
    pub provider: String,
    pub reason: String,
}

pub struct Session {
    graph: Graph,
    providers: Vec<Box<dyn ExecutionProvider>>,
    /// Providers left out, each with why ("amx: CPU has no AMX-TILE").
    skipped_providers: Vec<String>,
    partitions: Vec<(Partition, Box<dyn CompiledPartition>)>,
    assignment: Vec<Assignment>,
    pool: rayon::ThreadPool,
    threads: usize,
    options: SessionOptions,
    pass_report: PassReport,
    /// For each partition, the values whose last reader it is.
    frees: Vec<Vec<String>>,
}

/// The providers a session uses, in priority order, with the reason for
/// each one left out.
type Providers = Vec<Box<dyn ExecutionProvider>>;

fn available_providers(opts: &SessionOptions) -> Result<(Providers, Vec<String>)> {
    let mut out: Vec<Box<dyn ExecutionProvider>> = Vec::new();
    let mut skipped = Vec::new();
    let amx =
        || -> std::result::Result<AmxProvider, String> { AmxProvider::new_without(opts.precision, &opts.disable) };
    let accelerate = || -> std::result::Result<AccelerateProvider, String> {
        if opts.disable.iter().any(|d| d == "accelerate") {
            return Err("disabled by the session options".into());
        }
        AccelerateProvider::new()
    };
    let sme = || -> std::result::Result<SmeProvider, String> {
        if opts.disable.iter().any(|d| d == "sme") {
            return Err("disabled by the session options".into());
        }
        SmeProvider::new(opts.precision)
    };
    for n in &opts.providers {
        match n.as_str() {
            "auto" => {
                // Accelerate first: on macOS it is the way to Apple's matrix
                // unit (AMX on M1-M3) for fp32 products; elsewhere it is
                // skipped with its reason.
                // SME (M4) first for bf16 products, which cblas_sgemm cannot
                // do; Accelerate first for fp32, where Apple's own library
                // (itself on SME on M4) is the tuned path.
                let sme_first = matches!(opts.precision, Precision::Bf16 | Precision::Auto);
                if sme_first {
                    match sme() {
                        Ok(p) => out.push(Box::new(p)),
                        Err(why) => skipped.push(format!("sme: {why}")),
                    }
                }
                match accelerate() {
                    Ok(p) => out.push(Box::new(p)),
                    Err(why) => skipped.push(format!("accelerate: {why}")),
                }
                if !sme_first {
                    match sme() {
                        Ok(p) => out.push(Box::new(p)),
                        Err(why) => skipped.push(format!("sme: {why}")),
                    }
                }
                match amx() {
                    Ok(p) => out.push(Box::new(p)),
                    Err(why) => skipped.push(format!("amx: {why}")),
                }
            }
            "accelerate" => out
                .push(Box::new(accelerate().map_err(|why| Error::Unsupported(format!("provider accelerate: {why}")))?)),
            "amx" => out.push(Box::new(amx().map_err(|why| Error::Unsupported(format!("provider amx: {why}")))?)),
            "sme" => out.push(Box::new(sme().map_err(|why| Error::Unsupported(format!("provider sme: {why}")))?)),
            // Core ML (macOS): the Neural Engine regions, in fp16.
            "coreml" => out.push(Box::new(
                CoreMlProvider::new().map_err(|why| Error::Unsupported(format!("provider coreml: {why}")))?,
            )),
            // The same regions and conversions, run by the MIL interpreter:
            // previews the Core ML split and checks it off Apple hardware.
            "coreml-interpreter" => out.push(Box::new(CoreMlProvider::interpreter())),
            "cpu" => {}
            other => {
                return Err(Error::Input(format!(
                "unknown provider '{other}' (available: auto, accelerate, amx, sme, coreml, coreml-interpreter, cpu)"
            )))
            }
        }
    }
    out.push(Box::new(CpuProvider::new()));
    Ok((out, skipped))
}

impl Session {
    pub fn from_file(path: impl AsRef<Path>, opts: SessionOptions) -> Result<Session> {
        let model = tessera_onnx::load_model(path.as_ref()).map_err(|e| match e {
            Error::Io(io) => Error::Input(format!("{}: {io}", path.as_ref().display())),
            other => other,
        })?;
        Self::from_graph(model.graph, opts)
    }

    pub fn from_graph(mut graph: Graph, opts: SessionOptions) -> Result<Session> {
        graph.toposort()?;
        let (providers, skipped_providers) = available_providers(&opts)?;
        let cpu = CpuProvider::new();
        let eval = |g: &Graph, n: &tessera_core::Node, ins: &[Option<Tensor>]| cpu.eval_node(g, n, ins);
        // Core ML needs static shapes: bind the given dims and fold the shape
        // computations they decide, and keep plain ONNX ops (no CPU-only
        // fused nodes) so that regions convert.
        let coreml = opts.providers.iter().any(|p| p.starts_with("coreml"));
        if coreml {
            tessera_coreml::prepare::make_static(&mut graph, &opts.dims, &eval)?;
        }
        let pass_report =
            if opts.optimize { passes::optimize_with(&mut graph, &eval, !coreml)? } else { PassReport::default() };
        tessera_core::shape_inference::infer(&mut graph)?;

        let refs: Vec<&dyn ExecutionProvider> = providers.iter().map(|p| p.as_ref()).collect();
        let assignment = partition::assign(&graph, &refs)?;
        let parts = partition::split(&graph, &assignment);
        let mut partitions = Vec::with_capacity(parts.len());
        for p in parts {
            let compiled = providers[p.provider].compile(&graph, &p.sub)?;
            partitions.push((p, compiled));
        }
        let threads = if opts.threads == 0 {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        } else {
            opts.threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| Error::Other(format!("cannot start {threads} worker threads: {e}")))?;
        // Liveness across partitions: free a value after its last reader.
        let outputs: std::collections::HashSet<&str> = graph.outputs.iter().map(|o| o.name.as_str()).collect();
        let mut last: HashMap<&str, usize> = HashMap::new();
        for (pi, (p, _)) in partitions.iter().enumerate() {
            for i in &p.sub.inputs {
                last.insert(i, pi);
            }
        }
        let mut frees = vec![Vec::new(); partitions.len()];
        for (v, pi) in last {
            if !outputs.contains(v) {
                frees[pi].push(v.to_string());
            }
        }
        Ok(Session {
            graph,
            providers,
            skipped_providers,
            partitions,
            assignment,
            pool,
            threads,
            options: opts,
            pass_report,
            frees,
        })
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }
    pub fn inputs(&self) -> &[ValueInfo] {
        &self.graph.inputs
    }
    pub fn outputs(&self) -> &[ValueInfo] {
        &self.graph.outputs
    }
    pub fn threads(&self) -> usize {
        self.threads
    }
    /// Names of the providers in use, in priority order.
    pub fn provider_names(&self) -> Vec<String> {
        self.providers.iter().map(|p| p.name().to_string()).collect()
    }
    /// Providers not in use, each with the reason.
    pub fn skipped_providers(&self) -> &[String] {
        &self.skipped_providers
    }
    pub fn pass_report(&self) -> &PassReport {
        &self.pass_report
    }
    pub fn partition_count(&self) -> usize {
        self.partitions.len()
    }

    /// The device plans of partitions whose back end places operations
    /// itself (Core ML): (partition index, provider, plan).
    pub fn device_plans(&self) -> Vec<(usize, String, tessera_providers::DevicePlan)> {
        self.partitions
            .iter()
            .enumerate()
            .filter_map(|(i, (p, c))| {
                c.device_plan().map(|plan| (i, self.providers[p.provider].name().to_string(), plan.clone()))
            })
            .collect()
    }

    pub fn assignments(&self) -> Vec<NodeAssignment> {
        self.graph
            .nodes
            .iter()
            .zip(&self.assignment)
            .map(|(n, a)| NodeAssignment {
                node: n.name.clone(),
                op_type: if n.domain.is_empty() { n.op_type.clone() } else { format!("{}:{}", n.domain, n.op_type) },
                provider: self.providers[a.provider].name().to_string(),
                reason: a.reason.clone(),
            })
            .collect()
    }

    /// The static memory plan for concrete values of the symbolic dims
    /// (defaults from the session options).
    pub fn memory_plan(&self, dims: &HashMap<String, usize>) -> Result<MemoryPlan> {
        let mut all = self.options.dims.clone();
        all.extend(dims.iter().map(|(k, v)| (k.clone(), *v)));
        let cpu = CpuProvider::new();
        let eval = |g: &Graph, n: &tessera_core::Node, ins: &[Option<Tensor>]| cpu.eval_node(g, n, ins);
        tessera_core::plan::plan_with(&self.graph, &all, Some(&eval))
    }

    /// Checks the given inputs against the model's declared inputs and binds
    /// symbolic dimensions consistently.
    fn check_inputs(&self, inputs: &HashMap<String, Tensor>) -> Result<HashMap<String, usize>> {
        let mut bound: HashMap<String, usize> = HashMap::new();
        for decl in &self.graph.inputs {
            let t = inputs.get(&decl.name).ok_or_else(|| {
                Error::Input(format!("missing input '{}' (shape {})", decl.name, decl.shape_string()))
            })?;
            if let Some(dt) = decl.dtype {
                if dt != t.dtype() {
                    return Err(Error::Input(format!("input '{}' must be {dt}, got {}", decl.name, t.dtype())));
                }
            }
            if let Some(shape) = &decl.shape {
                if shape.len() != t.rank() {
                    return Err(Error::Input(format!(
                        "input '{}' must have rank {} {}, got shape {:?}",
                        decl.name,
                        shape.len(),
                        decl.shape_string(),
                        t.shape()
                    )));
                }
                for (d, &actual) in shape.iter().zip(t.shape()) {
                    match d {
                        Dim::Known(k) if *k != actual => {
                            return Err(Error::Input(format!(
                                "input '{}' must have shape {}, got {:?}",
                                decl.name,
                                decl.shape_string(),
                                t.shape()
                            )))
                        }
                        Dim::Sym(s) => {
                            if let Some(&prev) = bound.get(s) {
                                if prev != actual {
                                    return Err(Error::Input(format!(
                                        "dimension '{s}' is {prev} in one input and {actual} in '{}'",
                                        decl.name
                                    )));
                                }
                            }
                            bound.insert(s.clone(), actual);
                        }
                        _ => {}
                    }
                }
            }
        }
        for k in inputs.keys() {
            if !self.graph.is_input(k) {
                return Err(Error::Input(format!(
                    "'{k}' is not an input of this model (inputs: {})",
                    self.graph.inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
                )));
            }
        }
        Ok(bound)
    }

    /// Runs the model. Outputs come back in the graph's output order.
    pub fn run(&self, inputs: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>> {
        // One entry into the pool for the whole run: each partition's own
        // `install` then runs in place instead of handing its work to a
        // worker and putting this thread to sleep until it returns.
        self.pool.install(|| {
            let _spinning = (self.options.spin && self.threads > 1).then(|| SpinningWorkers::start(&self.pool));
            self.run_in_pool(inputs)
        })
    }

    fn run_in_pool(&self, inputs: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>> {
        let inputs: HashMap<String, Tensor> = inputs.into_iter().collect();
        self.check_inputs(&inputs)?;
        let mut values: HashMap<String, Value> = inputs.into_iter().map(|(k, v)| (k, Value::Host(v))).collect();
        let opts = RunOptions { pool: Some(&self.pool) };
        for (pi, (p, compiled)) in self.partitions.iter().enumerate() {
            let provider = &self.providers[p.provider];
            let mut ins = Vec::with_capacity(p.sub.inputs.len());
            for name in &p.sub.inputs {
                let v = values
                    .get(name)
                    .cloned()
                    .ok_or_else(|| Error::Other(format!("value '{name}' missing at a partition border")))?;
                // Copies happen only here, where a value changes memory domain.
                let v = if v.domain() == provider.memory_domain() { v } else { provider.import(v)? };
                ins.push(v);
            }
            let outs = compiled.run(ins, &opts)?;
            for (name, v) in p.sub.outputs.iter().zip(outs) {
                values.insert(name.clone(), v);
            }
            for v in &self.frees[pi] {
                if let Some(Value::Host(t)) = values.remove(v) {
                    tessera_providers::cpu::registry::recycle(t);
                }
            }
        }
        self.graph
            .outputs
            .iter()
            .map(|o| {
                let t = match values.get(&o.name) {
                    Some(v) => v.clone().into_host()?,
                    None => self
                        .graph
                        .initializers
                        .get(&o.name)
                        .cloned()
                        .ok_or_else(|| Error::Other(format!("output '{}' was not computed", o.name)))?,
                };
                Ok((o.name.clone(), t))
            })
            .collect()
    }
}

/// Every worker of a pool but the calling one, polling for stolen work
/// until this is dropped (see [`SessionOptions::spin`]).
///
/// A poller runs as a job, so a worker that picks one up while it is inside
/// another job (waiting in a nested join) would poll on top of that job and
/// hold it up until the poller's run ends. Rayon hands a worker its
/// broadcast jobs before it steals, so a run's jobs, which appear only
/// after its pollers are queued, are never under its own poller; but the
/// previous run's poller can steal one of them in the moment between its
/// last check of `stop` and its next steal, and then meet the new run's
/// poller inside it (a hang seen once in a few thousand BERT runs). So a
/// poller does not start on a thread where one is already running, and as
/// a last resort against any other nesting (concurrent runs on one
/// session) it returns after about [`IDLE_POLLS`] polls in a row that
/// found no work (the worker then sleeps as usual).
struct SpinningWorkers {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Idle polls before a poller gives up: each takes a few hundred
/// nanoseconds, so this is some tenths of a second, far above the gaps
/// between a run's parallel kernels.
const IDLE_POLLS: u32 = 1 << 20;

thread_local! {
    static POLLING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl SpinningWorkers {
    /// Must be called from a worker of `pool` (the one that runs the
    /// graph); that worker is left out, as it would otherwise poll on top
    /// of its own unfinished run.
    fn start(pool: &rayon::ThreadPool) -> SpinningWorkers {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let runner = rayon::current_thread_index();
        let flag = stop.clone();
        pool.spawn_broadcast(move |ctx| {
            if Some(ctx.index()) == runner || POLLING.with(|p| p.replace(true)) {
                return;
            }
            let mut idle = 0u32;
            while !flag.load(Ordering::Acquire) && idle < IDLE_POLLS {
                // Runs one job stolen from the graph's worker, if any.
                if rayon::yield_now() == Some(rayon::Yield::Executed) {
                    idle = 0;
                } else {
                    idle += 1;
                    std::hint::spin_loop();
                }
            }
            POLLING.with(|p| p.set(false));
        });
        SpinningWorkers { stop }
    }
}

impl Drop for SpinningWorkers {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
    }
}
