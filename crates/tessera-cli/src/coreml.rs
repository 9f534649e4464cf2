//! `tessera convert` (ONNX → Core ML `.mlpackage`) and `tessera coreml-run`
//! (runs a package with the MIL interpreter, for checks off Apple hardware).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use tessera_core::{DType, Graph, Node, Tensor};
use tessera_coreml::interp::{self, Arr, Data};
use tessera_coreml::spec::DataType;
use tessera_coreml::{Compute, ConvertOptions, WeightCompression};
use tessera_providers::cpu::CpuProvider;

#[derive(Args, Clone, Debug)]
pub struct ConvertArgs {
    /// The .onnx file.
    model: PathBuf,
    /// Target format (only coreml).
    #[arg(long, default_value = "coreml")]
    to: String,
    /// The .mlpackage directory to write.
    out: PathBuf,
    /// Float precision inside the program.
    #[arg(long, default_value = "fp16")]
    precision: String,
    /// Weight compression: int8 (per-channel symmetric) or palette4/palette6/palette8 (k-means lookup tables).
    #[arg(long)]
    quantize: Option<WeightCompression>,
    /// Value of a symbolic dimension, e.g. --dim batch=1.
    #[arg(long = "dim", value_parser = crate::parse_kv::<usize>)]
    dims: Vec<(String, usize)>,
    /// Sequence lengths: one function per length (several make a multifunction package).
    #[arg(long, value_delimiter = ',')]
    seq_lens: Vec<usize>,
    /// The dimension --seq-lens sets (default: the one symbolic dim left unbound).
    #[arg(long)]
    seq_dim: Option<String>,
    /// Keep a decoder's KV cache (present = Concat(past, new) pairs) in Core ML
    /// state: a right-aligned window of the last --max-context positions
    /// (iOS 18 / macOS 15).
    #[arg(long)]
    stateful_kv: bool,
    /// Capacity of each state, in positions (with --stateful-kv).
    #[arg(long)]
    max_context: Option<usize>,
    /// Oldest OS to load on: ios16 (= macos13) or ios18 (= macos15: states,
    /// palettes per group of output channels). Default: ios18 with
    /// --stateful-kv, else ios16.
    #[arg(long)]
    target: Option<tessera_coreml::Target>,
    /// Tensor layout inside the program: onnx (as exported) or ane (sequence
    /// models channels-first as (B, C, 1, S), linear layers as 1x1
    /// convolutions, attention one head at a time: Apple's Neural Engine
    /// guidance).
    #[arg(long, default_value = "onnx")]
    layout: String,
    #[arg(long)]
    json: bool,
}

pub fn convert(a: &ConvertArgs) -> Result<(), String> {
    if a.to != "coreml" {
        return Err(format!("--to {}: only 'coreml' is supported", a.to));
    }
    let stateful_kv = match (a.stateful_kv, a.max_context) {
        (true, Some(n)) => Some(n),
        (true, None) => return Err("--stateful-kv needs --max-context N (the cache capacity in positions)".into()),
        (false, Some(_)) => return Err("--max-context is the capacity of --stateful-kv; give both".into()),
        (false, None) => None,
    };
    let compute = match a.precision.as_str() {
        "fp16" => Compute::F16,
        "fp32" => Compute::F32,
        p => return Err(format!("--precision {p}: use fp16 or fp32")),
    };
    let ane_layout = match a.layout.as_str() {
        "onnx" => false,
        "ane" => true,
        l => return Err(format!("--layout {l}: use onnx or ane")),
    };
    let t0 = Instant::now();
    let model = tessera_onnx::load_model(&a.model).map_err(|e| format!("{}: {e}", a.model.display()))?;
    let opts = ConvertOptions {
        compute,
        compression: a.quantize,
        dims: a.dims.iter().cloned().collect(),
        seq_lens: a.seq_lens.clone(),
        seq_dim: a.seq_dim.clone(),
        stateful_kv,
        target: a.target.unwrap_or(if stateful_kv.is_some() {
            tessera_coreml::Target::Ios18
        } else {
            tessera_coreml::Target::Ios16
        }),
        ane_layout,
    };
    let cpu = CpuProvider::new();
    let eval = |g: &Graph, n: &Node, ins: &[Option<Tensor>]| cpu.eval_node(g, n, ins);
    let (pkg, report) =
        tessera_coreml::convert_graph(&model.graph, &opts, &eval).map_err(|e| format!("{}: {e}", a.model.display()))?;
    tessera_coreml::write_package(&pkg, &a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    let secs = t0.elapsed().as_secs_f64();
    let spec_bytes = std::fs::metadata(a.out.join("Data/com.apple.CoreML/model.mlmodel")).map(|m| m.len()).unwrap_or(0);
    if a.json {
        let j = serde_json::json!({
            "package": a.out,
            "specification_version": report.specification_version,
            "opset": report.opset,
            "weight_bytes": report.weight_bytes,
            "spec_bytes": spec_bytes,
            "seconds": secs,
            "functions": report.functions.iter().map(|f| serde_json::json!({
                "name": f.name, "dims": f.dims, "ops": f.op_counts, "weights_compressed": f.weights_compressed,
                "shapes_folded": f.prepare.shapes_folded, "constants_folded": f.prepare.constants_folded,
                "batchnorms_folded": f.prepare.batchnorms_folded, "layernorms_fused": f.prepare.layernorms_fused,
                "gelus_fused": f.prepare.gelus_fused,
            })).collect::<Vec<_>>(),
        });
        println!("{j}");
        return Ok(());
    }
    println!(
        "{} -> {} (Core ML spec {}, MIL opset {}, {:.1} s)",
        a.model.display(),
        a.out.display(),
        report.specification_version,
        report.opset,
        secs
    );
    println!(
        "  weights/weight.bin {:.2} MB, model.mlmodel {:.1} KB",
        report.weight_bytes as f64 / 1e6,
        spec_bytes as f64 / 1e3
    );
    for f in &report.functions {
        let ops: Vec<String> = f.op_counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("  function '{}' {:?}: {}", f.name, f.dims, ops.join(", "));
        println!(
            "    folded {} shape ops and {} constants, {} batch norms into convs; fused {} layer norms, {} GELUs; {} weights compressed",
            f.prepare.shapes_folded,
            f.prepare.constants_folded,
            f.prepare.batchnorms_folded,
            f.prepare.layernorms_fused,
            f.prepare.gelus_fused,
            f.weights_compressed
        );
    }
    Ok(())
}

#[derive(Args, Clone, Debug)]
pub struct CoremlRunArgs {
    /// The .mlpackage directory.
    package: PathBuf,
    /// Function to run (multifunction packages).
    #[arg(long, default_value = "main")]
    function: String,
    /// An input from a .npy file: NAME=FILE.npy (others are generated as `tessera run` does).
    #[arg(long = "input", value_parser = crate::parse_kv::<PathBuf>)]
    inputs: Vec<(String, PathBuf)>,
    #[arg(long, default_value = ".")]
    output_dir: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stateful packages: read the states from NAME.npy files in this folder
    /// (missing ones start at zero, as a fresh Core ML state does).
    #[arg(long)]
    state_in: Option<PathBuf>,
    /// Stateful packages: write the updated states here as NAME.npy.
    #[arg(long)]
    state_out: Option<PathBuf>,
    /// Also write each decompressed weight (constexpr_* outputs) here as
    /// NAME.npy, for comparison with another decoder of the package.
    #[arg(long)]
    dump_constexpr: Option<PathBuf>,
}

pub fn coreml_run(a: &CoremlRunArgs) -> Result<(), String> {
    let pkg = tessera_coreml::read_package(&a.package).map_err(|e| format!("{}: {e}", a.package.display()))?;
    let prog = pkg.model.ml_program.as_ref().ok_or("not an ML Program")?;
    let f = prog.functions.get(&a.function).ok_or_else(|| format!("no function '{}'", a.function))?;
    let given: HashMap<&str, &PathBuf> = a.inputs.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut rng = tessera::demo::Rng::new(a.seed);
    let mut inputs = Vec::new();
    for inp in &f.inputs {
        if matches!(
            inp.r#type.as_ref().and_then(|t| t.r#type.as_ref()),
            Some(tessera_coreml::spec::value_type::Type::StateType(_))
        ) {
            continue;
        }
        let t = match given.get(inp.name.as_str()) {
            Some(p) => tessera::npy::read_npy(p).map_err(|e| format!("{}: {e}", p.display()))?,
            None => {
                let Some(tessera_coreml::spec::value_type::Type::TensorType(tt)) =
                    inp.r#type.as_ref().and_then(|t| t.r#type.as_ref())
                else {
                    return Err(format!("input '{}' is not a tensor", inp.name));
                };
                let shape: Vec<tessera_core::Dim> = tt
                    .dimensions
                    .iter()
                    .map(|d| match &d.dimension {
                        Some(tessera_coreml::spec::dimension::Dimension::Constant(c)) => {
                            tessera_core::Dim::Known(c.size as usize)
                        }
                        _ => tessera_core::Dim::Unknown,
                    })
                    .collect();
                let dtype = if tt.data_type == DataType::Int32 as i32 { DType::I32 } else { DType::F32 };
                let vi = tessera_core::ValueInfo { name: inp.name.clone(), dtype: Some(dtype), shape: Some(shape) };
                crate::generate_input(&vi, &HashMap::new(), &mut rng)?
            }
        };
        inputs.push((inp.name.clone(), Arr::from_tensor(&t)));
    }
    let prepared = interp::Prepared::new(&pkg, &a.function).map_err(|e| format!("{}: {e}", a.package.display()))?;
    if let Some(dir) = &a.dump_constexpr {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for (name, arr) in prepared.constexpr_values().map_err(|e| e.to_string())? {
            let t =
                Tensor::from_vec(&arr.shape, arr.floats().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
            let p = out_path(dir, &name);
            tessera::npy::write_npy(&p, &t).map_err(|e| format!("{}: {e}", p.display()))?;
        }
    }
    let mut states = HashMap::new();
    if let Some(dir) = &a.state_in {
        for (name, _) in prepared.states() {
            let p = out_path(dir, name);
            if p.exists() {
                let t = tessera::npy::read_npy(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                states.insert(name.clone(), Arr::from_tensor(&t));
            }
        }
    }
    let t0 = Instant::now();
    let outs = prepared.run_with_states(&inputs, &mut states).map_err(|e| format!("{}: {e}", a.package.display()))?;
    let secs = t0.elapsed().as_secs_f64();
    if let Some(dir) = &a.state_out {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for (name, arr) in &states {
            let t =
                Tensor::from_vec(&arr.shape, arr.floats().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
            let p = out_path(dir, name);
            tessera::npy::write_npy(&p, &t).map_err(|e| format!("{}: {e}", p.display()))?;
        }
    } else if !states.is_empty() {
        println!("{} states updated (give --state-out DIR to keep them)", states.len());
    }
    std::fs::create_dir_all(&a.output_dir).map_err(|e| format!("{}: {e}", a.output_dir.display()))?;
    for (name, arr) in outs {
        let t = match &arr.data {
            Data::F(v) => Tensor::from_vec(&arr.shape, v.clone()),
            Data::I(v) => Tensor::from_vec(&arr.shape, v.clone()),
            _ => return Err(format!("output '{name}' is not a float or int32 array")),
        }
        .map_err(|e| e.to_string())?;
        let p = out_path(&a.output_dir, &name);
        tessera::npy::write_npy(&p, &t).map_err(|e| format!("{}: {e}", p.display()))?;
        println!("{name}: {:?} {:?} -> {}", arr.dtype, arr.shape, p.display());
    }
    println!("interpreted in {secs:.2} s");
    Ok(())
}

fn out_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{}.npy", crate::sanitize(name)))
}
