//! The `.mlpackage` around a converted program: the `Model` message,
//! `Manifest.json` and `weights/weight.bin`, and reading one back (bounded:
//! packages are files from elsewhere too).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use prost::Message;
use tessera_core::passes::Evaluator;
use tessera_core::{Dim, Error, Graph, Result};

use crate::blob::BlobWriter;
use crate::convert::{convert_function, Compute, FunctionOptions};
use crate::prepare::{prepare, PrepareReport};
use crate::quantize::WeightCompression;
use crate::spec::{self, array_data_type, feature_type, DataType};

/// How a model is converted.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    pub compute: Compute,
    pub compression: Option<WeightCompression>,
    /// Values of the model's symbolic dimensions.
    pub dims: HashMap<String, usize>,
    /// One function per sequence length (a multifunction package when more
    /// than one), for the dimension named `seq_dim`.
    pub seq_lens: Vec<usize>,
    pub seq_dim: Option<String>,
    /// Keep the KV caches in Core ML state of this capacity (positions).
    /// Needs iOS 18 / macOS 15.
    pub stateful_kv: Option<usize>,
    /// Oldest OS the package must load on.
    pub target: Target,
    /// Sequence models in the Neural Engine's channels-first layout.
    pub ane_layout: bool,
}

/// Deployment target: what the package may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Target {
    /// iOS 16 / macOS 13: spec 7, MIL opset CoreML6, per-tensor palettes.
    #[default]
    Ios16,
    /// iOS 18 / macOS 15: spec 9, MIL opset CoreML8, states, palettes per
    /// group of output channels.
    Ios18,
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "ios16" | "macos13" => Ok(Target::Ios16),
            "ios18" | "macos15" => Ok(Target::Ios18),
            other => Err(format!("unknown target '{other}' (ios16 = macos13, ios18 = macos15)")),
        }
    }
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            compute: Compute::F16,
            compression: None,
            dims: HashMap::new(),
            seq_lens: vec![],
            seq_dim: None,
            stateful_kv: None,
            target: Target::Ios16,
            ane_layout: false,
        }
    }
}

/// A converted model in memory.
#[derive(Clone, Debug)]
pub struct Package {
    pub model: spec::Model,
    pub weights: Vec<u8>,
}

/// One function of the package, for reports.
#[derive(Clone, Debug)]
pub struct FunctionReport {
    pub name: String,
    pub dims: BTreeMap<String, usize>,
    pub prepare: PrepareReport,
    pub op_counts: Vec<(String, usize)>,
    pub weights_compressed: usize,
}

#[derive(Clone, Debug)]
pub struct ConvertReport {
    pub specification_version: i32,
    pub opset: &'static str,
    pub functions: Vec<FunctionReport>,
    pub weight_bytes: usize,
}

/// Core ML specification version and MIL opset: iOS 16 / macOS 13 (spec 7,
/// opset CoreML6) unless several functions need spec 9 (iOS 18 / macOS 15),
/// or the target is iOS 18, whose opset CoreML8 states need.
fn versions(functions: usize, target: Target) -> (i32, &'static str) {
    if target == Target::Ios18 {
        (9, "CoreML8")
    } else if functions > 1 {
        (9, "CoreML6")
    } else {
        (7, "CoreML6")
    }
}

fn array_type(dt: DataType, shape: &[usize]) -> spec::ArrayFeatureType {
    let data_type = match dt {
        DataType::Int32 => array_data_type::INT32,
        DataType::Float16 => array_data_type::FLOAT16,
        _ => array_data_type::FLOAT32,
    };
    spec::ArrayFeatureType { shape: shape.iter().map(|&d| d as i64).collect(), data_type, shape_flexibility: None }
}

fn feature(name: &str, dt: DataType, shape: &[usize]) -> spec::FeatureDescription {
    spec::FeatureDescription {
        name: name.into(),
        short_description: String::new(),
        r#type: Some(spec::FeatureType {
            r#type: Some(feature_type::Type::MultiArrayType(array_type(dt, shape))),
            is_optional: false,
        }),
    }
}

/// A state feature: Core ML keeps states in fp16.
fn state_feature(name: &str, shape: &[usize]) -> spec::FeatureDescription {
    spec::FeatureDescription {
        name: name.into(),
        short_description: String::new(),
        r#type: Some(spec::FeatureType {
            r#type: Some(feature_type::Type::StateType(spec::StateFeatureType {
                array_type: Some(array_type(DataType::Float16, shape)),
            })),
            is_optional: false,
        }),
    }
}

/// The symbolic dims of the graph inputs, in order of first appearance.
pub fn symbolic_dims(g: &Graph) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for i in &g.inputs {
        for d in i.shape.iter().flatten() {
            if let Dim::Sym(s) = d {
                if !out.contains(s) {
                    out.push(s.clone());
                }
            }
        }
    }
    out
}

/// Converts a whole graph. `eval` runs single nodes on constants (the CPU
/// provider's), for folding.
pub fn convert_graph(graph: &Graph, opts: &ConvertOptions, eval: &Evaluator) -> Result<(Package, ConvertReport)> {
    let states = match opts.stateful_kv {
        None => vec![],
        Some(_) => {
            let s = crate::state::find_kv_states(graph)?;
            if s.is_empty() {
                return Err(Error::Input(
                    "--stateful-kv: no KV cache found (a graph output made by Concat(past input, new entries))".into(),
                ));
            }
            s
        }
    };
    let mut variants: Vec<(String, HashMap<String, usize>)> = Vec::new();
    if opts.seq_lens.is_empty() {
        variants.push(("main".into(), opts.dims.clone()));
    } else {
        let free: Vec<String> = symbolic_dims(graph)
            .into_iter()
            .filter(|d| !opts.dims.contains_key(d) && !states.iter().any(|s| &s.past_dim == d))
            .collect();
        let seq = match &opts.seq_dim {
            Some(s) => s.clone(),
            None => match free.as_slice() {
                [one] => one.clone(),
                [] => return Err(Error::Input("--seq-lens given but the model has no unbound symbolic dimension".into())),
                many => {
                    return Err(Error::Input(format!(
                        "--seq-lens: which dimension is the sequence? unbound: {} (bind the others with --dim or name it with --seq-dim)",
                        many.join(", ")
                    )))
                }
            },
        };
        let mut lens = opts.seq_lens.clone();
        lens.sort_unstable();
        lens.dedup();
        for l in lens {
            let mut d = opts.dims.clone();
            d.insert(seq.clone(), l);
            variants.push((if opts.seq_lens.len() == 1 { "main".into() } else { format!("{seq}_{l}") }, d));
        }
    }
    if let Some(cap) = opts.stateful_kv {
        for (_, dims) in &mut variants {
            *dims = crate::state::bind_past_dims(graph, &states, dims, cap)?;
        }
    }
    if !states.is_empty() && opts.target != Target::Ios18 {
        return Err(Error::Input("--stateful-kv needs the iOS 18 / macOS 15 target (Core ML state)".into()));
    }
    let (spec_version, opset) = versions(variants.len(), opts.target);
    let mut blobs = BlobWriter::new();
    let mut program = spec::Program { version: 1, ..Default::default() };
    let mut descs = Vec::new();
    let mut reports = Vec::new();
    for (name, dims) in &variants {
        let mut g = graph.clone();
        let prep = prepare(&mut g, dims, eval)?;
        let f = convert_function(
            &g,
            &mut blobs,
            &FunctionOptions {
                opset,
                compute: opts.compute,
                compression: opts.compression,
                states: states.clone(),
                ane_layout: opts.ane_layout,
            },
        )?;
        descs.push(spec::FunctionDescription {
            name: name.clone(),
            input: f.inputs.iter().map(|(n, d, s)| feature(n, *d, s)).collect(),
            output: f.outputs.iter().map(|(n, d, s)| feature(n, *d, s)).collect(),
            state: f.states.iter().map(|(n, s)| state_feature(n, s)).collect(),
        });
        reports.push(FunctionReport {
            name: name.clone(),
            dims: dims.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            prepare: prep,
            op_counts: f.op_counts,
            weights_compressed: f.weights_compressed,
        });
        program.functions.insert(name.clone(), f.function);
    }
    let mut user_defined = BTreeMap::new();
    user_defined.insert("com.tessera.converter".to_string(), format!("tessera {}", env!("CARGO_PKG_VERSION")));
    user_defined.insert(
        "com.tessera.precision".to_string(),
        match opts.compute {
            Compute::F16 => "fp16".into(),
            Compute::F32 => "fp32".into(),
        },
    );
    if let Some(c) = opts.compression {
        user_defined.insert("com.tessera.quantize".to_string(), format!("{c:?}"));
    }
    if let Some(cap) = opts.stateful_kv {
        user_defined.insert("com.tessera.kv_capacity".to_string(), cap.to_string());
    }
    let mut description = spec::ModelDescription {
        input: descs[0].input.clone(),
        output: descs[0].output.clone(),
        state: descs[0].state.clone(),
        metadata: Some(spec::Metadata { user_defined, ..Default::default() }),
        ..Default::default()
    };
    if descs.len() > 1 {
        description.default_function_name = descs[0].name.clone();
        description.functions = descs;
    }
    let weights = blobs.finish();
    let report =
        ConvertReport { specification_version: spec_version, opset, functions: reports, weight_bytes: weights.len() };
    let model = spec::Model {
        specification_version: spec_version,
        description: Some(description),
        is_updatable: false,
        ml_program: Some(program),
    };
    Ok((Package { model, weights }, report))
}

/// A UUID-shaped identifier derived from `seed` (stable across runs, so a
/// package converted twice is byte-identical).
fn stable_id(seed: &str) -> String {
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for b in seed.bytes() {
        h ^= b as u128;
        h = h.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013B);
    }
    let s = format!("{h:032X}");
    format!("{}-{}-{}-{}-{}", &s[0..8], &s[8..12], &s[12..16], &s[16..20], &s[20..32])
}

const MODEL_PATH: &str = "com.apple.CoreML/model.mlmodel";
const WEIGHTS_DIR: &str = "com.apple.CoreML/weights";

/// Writes `pkg` as the package directory `dir` (replacing its contents).
pub fn write_package(pkg: &Package, dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    let data = dir.join("Data");
    std::fs::create_dir_all(data.join(WEIGHTS_DIR))?;
    std::fs::write(data.join(MODEL_PATH), pkg.model.encode_to_vec())?;
    std::fs::write(data.join(WEIGHTS_DIR).join("weight.bin"), &pkg.weights)?;
    let model_id = stable_id("model");
    let weights_id = stable_id("weights");
    let manifest = serde_json::json!({
        "fileFormatVersion": "1.0.0",
        "itemInfoEntries": {
            model_id.clone(): {
                "author": "com.apple.CoreML",
                "description": "CoreML Model Specification",
                "name": "model.mlmodel",
                "path": MODEL_PATH,
            },
            weights_id: {
                "author": "com.apple.CoreML",
                "description": "CoreML Model Weights",
                "name": "weights",
                "path": WEIGHTS_DIR,
            },
        },
        "rootModelIdentifier": model_id,
    });
    std::fs::write(
        dir.join("Manifest.json"),
        serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Other(e.to_string()))?,
    )?;
    Ok(())
}

/// Largest model.mlmodel / weight.bin read (the blob file is read whole).
const MAX_FILE_BYTES: u64 = 4 << 30;

fn read_bounded(p: &Path) -> Result<Vec<u8>> {
    let len = std::fs::metadata(p).map_err(|e| Error::Input(format!("{}: {e}", p.display())))?.len();
    if len > MAX_FILE_BYTES {
        return Err(Error::InvalidModel(format!(
            "{} is {len} bytes, above the {MAX_FILE_BYTES}-byte limit",
            p.display()
        )));
    }
    Ok(std::fs::read(p)?)
}

/// A relative path from a manifest, kept inside `root`.
fn inside(root: &Path, rel: &str) -> Result<PathBuf> {
    let p = Path::new(rel);
    if p.is_absolute() || p.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
        return Err(Error::InvalidModel(format!("package path '{rel}' leaves the package")));
    }
    Ok(root.join(p))
}

/// Reads a package written by anyone (coremltools' too).
pub fn read_package(dir: &Path) -> Result<Package> {
    let manifest: serde_json::Value = serde_json::from_slice(&read_bounded(&dir.join("Manifest.json"))?)
        .map_err(|e| Error::InvalidModel(format!("Manifest.json: {e}")))?;
    let root = manifest["rootModelIdentifier"]
        .as_str()
        .ok_or_else(|| Error::InvalidModel("Manifest.json has no rootModelIdentifier".into()))?;
    let rel = manifest["itemInfoEntries"][root]["path"]
        .as_str()
        .ok_or_else(|| Error::InvalidModel(format!("Manifest.json: no item '{root}'")))?;
    let model_path = inside(&dir.join("Data"), rel)?;
    let model = spec::Model::decode(read_bounded(&model_path)?.as_slice())
        .map_err(|e| Error::InvalidModel(format!("{}: {e}", model_path.display())))?;
    let weights_path = model_path.parent().unwrap_or(dir).join("weights").join("weight.bin");
    let weights = if weights_path.exists() { read_bounded(&weights_path)? } else { Vec::new() };
    Ok(Package { model, weights })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_paths_stay_inside() {
        let root = Path::new("/pkg");
        assert!(inside(root, "com.apple.CoreML/model.mlmodel").is_ok());
        for bad in ["../x", "/etc/passwd", "a/../../b", "./a"] {
            assert!(inside(root, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        assert_eq!(stable_id("model"), stable_id("model"));
        assert_ne!(stable_id("model"), stable_id("weights"));
        assert_eq!(stable_id("model").len(), 36);
    }
}
