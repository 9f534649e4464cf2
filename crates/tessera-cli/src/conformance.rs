//! `tessera conformance`: runs ONNX backend test cases and model cases.
//!
//! A *case* is a directory holding `model.onnx` and one or more
//! `test_data_set_N/` folders with `input_K.pb` / `output_K.pb` tensors (the
//! layout of the ONNX backend test data), plus an optional `data.json` with
//! `rtol` / `atol` overrides (the ONNX test loader's convention). Every case is
//! run on its own thread with a time limit, a panic is caught, and the result
//! is put in one of six classes (see [`Class`]). Outputs are compared as the
//! ONNX backend test runner compares them (`np.testing.assert_allclose`,
//! rtol 1e-3 / atol 1e-7 unless the case overrides them, bfloat16 at least two
//! ulps, NaN equal to NaN), except that integer and boolean outputs must match
//! exactly. Dtype and shape must match.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use tessera_core::{DType, Error, Tensor};

/// Default tolerances of the ONNX backend test runner.
const DEFAULT_RTOL: f64 = 1e-3;
const DEFAULT_ATOL: f64 = 1e-7;

#[derive(clap::Args, Debug, Clone)]
pub struct ConformanceArgs {
    /// Directories searched (recursively) for case directories. Default: the
    /// generated node tests (.cache/onnx-node-tests), the light models
    /// (.cache/onnx-light-tests), the quantized contrib operators
    /// (.cache/onnx-contrib-tests) and the onnx wheel's backend/test/data/
    /// {pytorch-converted,pytorch-operator,simple} found under .venv.
    pub roots: Vec<PathBuf>,
    /// Only run cases whose id (`kind/name`) contains one of these substrings.
    #[arg(long)]
    pub filter: Vec<String>,
    /// Cases run at the same time (each session uses --threads threads).
    #[arg(short = 'j', long, default_value_t = 2)]
    pub jobs: usize,
    /// Threads per session.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Per-case time limit in seconds (load + all data sets).
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
    /// Write the per-case table here as markdown, and next to it as TSV
    /// (same path with the extension .tsv).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// A list of case ids that must pass; exit 1 if any of them does not.
    #[arg(long)]
    pub expected: Option<PathBuf>,
    /// Rewrite the --expected file with the cases that passed (with --filter,
    /// entries outside the filter are kept).
    #[arg(long, requires = "expected")]
    pub write_expected: bool,
    /// Print every case that does not pass as it finishes.
    #[arg(short, long)]
    pub verbose: bool,
}

/// What happened to one case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    Pass,
    WrongResult,
    UnsupportedOp,
    Error,
    Crash,
    Timeout,
}

impl Class {
    pub const ALL: [Class; 6] =
        [Class::Pass, Class::WrongResult, Class::UnsupportedOp, Class::Error, Class::Crash, Class::Timeout];

    pub fn name(self) -> &'static str {
        match self {
            Class::Pass => "pass",
            Class::WrongResult => "wrong-result",
            Class::UnsupportedOp => "unsupported-op",
            Class::Error => "error",
            Class::Crash => "crash",
            Class::Timeout => "timeout",
        }
    }
}

/// Outcome of a case: its class and a one-line explanation.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub class: Class,
    pub detail: String,
}

impl Outcome {
    fn new(class: Class, detail: impl Into<String>) -> Outcome {
        Outcome { class, detail: detail.into() }
    }
    fn pass() -> Outcome {
        Outcome::new(Class::Pass, "")
    }
}

/// True when an error means "Tessera does not implement this", as opposed to
/// a failure of something it claims to implement.
pub fn is_unsupported(e: &Error) -> bool {
    if matches!(e, Error::Unsupported(_)) {
        return true;
    }
    let m = e.to_string().to_ascii_lowercase();
    m.contains("unsupported") || m.contains("not supported") || m.contains("not implemented")
}

/// Classifies a Tessera error raised while `stage` was being done.
pub fn classify_error(stage: &str, e: &Error) -> Outcome {
    let class = if is_unsupported(e) { Class::UnsupportedOp } else { Class::Error };
    Outcome::new(class, format!("{stage}: {e}"))
}

// ---------------------------------------------------------------------------
// Output comparison
// ---------------------------------------------------------------------------

/// Relative and absolute tolerance, as in `np.testing.assert_allclose`:
/// `|actual - expected| <= atol + rtol * |expected|`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    pub rtol: f64,
    pub atol: f64,
}

impl Default for Tolerance {
    fn default() -> Self {
        Tolerance { rtol: DEFAULT_RTOL, atol: DEFAULT_ATOL }
    }
}

enum Values {
    Float(Vec<f64>),
    Signed(Vec<i64>),
    Unsigned(Vec<u64>),
}

fn values(t: &Tensor) -> Result<Values, String> {
    let e = |e: Error| e.to_string();
    Ok(match t.dtype() {
        DType::F32 => Values::Float(t.as_slice::<f32>().map_err(e)?.iter().map(|&v| v as f64).collect()),
        DType::F64 => Values::Float(t.as_slice::<f64>().map_err(e)?.to_vec()),
        DType::F16 => Values::Float(t.as_slice::<half::f16>().map_err(e)?.iter().map(|v| v.to_f64()).collect()),
        DType::BF16 => Values::Float(t.as_slice::<half::bf16>().map_err(e)?.iter().map(|v| v.to_f64()).collect()),
        DType::I8 => Values::Signed(t.as_slice::<i8>().map_err(e)?.iter().map(|&v| v as i64).collect()),
        DType::I16 => Values::Signed(t.as_slice::<i16>().map_err(e)?.iter().map(|&v| v as i64).collect()),
        DType::I32 => Values::Signed(t.as_slice::<i32>().map_err(e)?.iter().map(|&v| v as i64).collect()),
        DType::I64 => Values::Signed(t.as_slice::<i64>().map_err(e)?.to_vec()),
        DType::U8 | DType::Bool => Values::Unsigned(t.bytes().iter().map(|&v| v as u64).collect()),
        DType::U16 => Values::Unsigned(t.as_slice::<u16>().map_err(e)?.iter().map(|&v| v as u64).collect()),
        DType::U32 => Values::Unsigned(t.as_slice::<u32>().map_err(e)?.iter().map(|&v| v as u64).collect()),
        DType::U64 => Values::Unsigned(t.as_slice::<u64>().map_err(e)?.to_vec()),
    })
}

/// Multi-dimensional index of flat position `flat` in `shape`.
fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (i, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            idx[i] = flat % d;
            flat /= d;
        }
    }
    idx
}

fn float_close(a: f64, e: f64, tol: Tolerance) -> bool {
    if a.is_nan() || e.is_nan() {
        return a.is_nan() && e.is_nan();
    }
    if a.is_infinite() || e.is_infinite() {
        return a == e;
    }
    (a - e).abs() <= tol.atol + tol.rtol * e.abs()
}

/// Compares one output with its expected value. `Err` says what differs.
pub fn compare(expected: &Tensor, actual: &Tensor, tol: Tolerance) -> Result<(), String> {
    if expected.dtype() != actual.dtype() {
        return Err(format!("dtype: expected {}, got {}", expected.dtype(), actual.dtype()));
    }
    if expected.shape() != actual.shape() {
        return Err(format!("shape: expected {:?}, got {:?}", expected.shape(), actual.shape()));
    }
    let shape = expected.shape();
    let tol = if expected.dtype() == DType::BF16 {
        // The ONNX runner allows two bfloat16 ulps.
        Tolerance { rtol: tol.rtol.max(2f64.powi(-6)), atol: tol.atol }
    } else {
        tol
    };
    let (bad, first, worst) = match (values(expected)?, values(actual)?) {
        (Values::Float(e), Values::Float(a)) => {
            let mut bad = 0usize;
            let mut first = None;
            let mut max_abs = 0f64;
            for (i, (&ev, &av)) in e.iter().zip(&a).enumerate() {
                if !float_close(av, ev, tol) {
                    bad += 1;
                    first.get_or_insert((i, format!("{ev:e}"), format!("{av:e}")));
                    let d = (av - ev).abs();
                    if d.is_nan() || d > max_abs || max_abs.is_nan() {
                        max_abs = d;
                    }
                }
            }
            (bad, first, format!(", max abs err {max_abs:e} (rtol {:e}, atol {:e})", tol.rtol, tol.atol))
        }
        (Values::Signed(e), Values::Signed(a)) => exact(&e, &a),
        (Values::Unsigned(e), Values::Unsigned(a)) => exact(&e, &a),
        _ => unreachable!("same dtype gives the same value kind"),
    };
    match first {
        None => Ok(()),
        Some((i, ev, av)) => Err(format!(
            "{bad} of {} values differ; first at {:?}: expected {ev}, got {av}{worst}",
            expected.numel(),
            unravel(i, shape)
        )),
    }
}

#[allow(clippy::type_complexity)]
fn exact<T: PartialEq + std::fmt::Display>(e: &[T], a: &[T]) -> (usize, Option<(usize, String, String)>, String) {
    let mut bad = 0;
    let mut first = None;
    for (i, (ev, av)) in e.iter().zip(a).enumerate() {
        if ev != av {
            bad += 1;
            first.get_or_insert((i, ev.to_string(), av.to_string()));
        }
    }
    (bad, first, " (integers must match exactly)".into())
}

// ---------------------------------------------------------------------------
// A minimal protobuf walker, used only to see whether a model's graph inputs
// and outputs are tensors (the Session API and this runner handle tensors
// only; sequence/optional/map-typed test data is stored as other messages).
// ---------------------------------------------------------------------------

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= ((b & 0x7f) as u64) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Calls `f(field_number, value)` for every top-level field of a message.
fn fields<'a>(buf: &'a [u8], mut f: impl FnMut(u64, Field<'a>)) -> Option<()> {
    let mut pos = 0;
    while pos < buf.len() {
        let key = varint(buf, &mut pos)?;
        let (num, wire) = (key >> 3, key & 7);
        match wire {
            0 => f(num, Field::Varint(varint(buf, &mut pos)?)),
            1 => {
                pos = pos.checked_add(8).filter(|&p| p <= buf.len())?;
                f(num, Field::Fixed)
            }
            2 => {
                let len = varint(buf, &mut pos)? as usize;
                let end = pos.checked_add(len).filter(|&e| e <= buf.len())?;
                f(num, Field::Bytes(&buf[pos..end]));
                pos = end;
            }
            5 => {
                pos = pos.checked_add(4).filter(|&p| p <= buf.len())?;
                f(num, Field::Fixed)
            }
            _ => return None,
        }
    }
    Some(())
}

/// The kind of a graph input or output (ONNX `TypeProto`'s `value` oneof).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueKind {
    /// A tensor with its ONNX element type code.
    Tensor(i32),
    Sequence,
    Map,
    Optional,
    SparseTensor,
    Other,
}

impl ValueKind {
    fn describe(&self) -> String {
        match self {
            ValueKind::Tensor(8) => "string tensor".into(),
            ValueKind::Tensor(c) => format!("tensor (type {c})"),
            ValueKind::Sequence => "sequence".into(),
            ValueKind::Map => "map".into(),
            ValueKind::Optional => "optional".into(),
            ValueKind::SparseTensor => "sparse tensor".into(),
            ValueKind::Other => "non-tensor value".into(),
        }
    }
}

fn value_kind(type_proto: &[u8]) -> ValueKind {
    let mut kind = ValueKind::Other;
    fields(type_proto, |n, v| {
        if let Field::Bytes(b) = v {
            kind = match n {
                1 => {
                    let mut elem = 0;
                    fields(b, |n, v| {
                        if let (1, Field::Varint(e)) = (n, v) {
                            elem = e as i32;
                        }
                    });
                    ValueKind::Tensor(elem)
                }
                4 => ValueKind::Sequence,
                5 => ValueKind::Map,
                8 => ValueKind::SparseTensor,
                9 => ValueKind::Optional,
                _ => kind.clone(),
            };
        }
    });
    kind
}

/// Graph inputs (initializers included) and outputs of a serialized model.
#[derive(Debug, Default, PartialEq)]
pub struct GraphIo {
    pub inputs: Vec<(String, ValueKind)>,
    pub outputs: Vec<(String, ValueKind)>,
}

pub fn graph_io(model: &[u8]) -> Option<GraphIo> {
    let mut graph = None;
    fields(model, |n, v| {
        if let (7, Field::Bytes(b)) = (n, v) {
            graph = Some(b);
        }
    })?;
    let mut io = GraphIo::default();
    let mut ok = true;
    fields(graph?, |n, v| {
        if let (11 | 12, Field::Bytes(b)) = (n, v) {
            let mut name = String::new();
            let mut kind = ValueKind::Other;
            ok &= fields(b, |n, v| match (n, v) {
                (1, Field::Bytes(s)) => name = String::from_utf8_lossy(s).into_owned(),
                (2, Field::Bytes(t)) => kind = value_kind(t),
                _ => {}
            })
            .is_some();
            if n == 11 { &mut io.inputs } else { &mut io.outputs }.push((name, kind));
        }
    })?;
    ok.then_some(io)
}

// ---------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------

/// One case directory.
#[derive(Clone, Debug, PartialEq)]
pub struct Case {
    /// `<parent folder>/<case folder>`, e.g. `node/test_abs`.
    pub id: String,
    pub dir: PathBuf,
}

fn is_case_dir(dir: &Path) -> bool {
    dir.join("model.onnx").is_file()
}

/// Finds case directories under `root` (the root itself may be one).
pub fn discover(root: &Path) -> std::io::Result<Vec<Case>> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<Case>) -> std::io::Result<()> {
        if is_case_dir(dir) {
            let name = dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let parent =
                dir.parent().and_then(|p| p.file_name()).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            out.push(Case { id: format!("{parent}/{name}"), dir: dir.to_path_buf() });
            return Ok(());
        }
        if depth == 0 {
            return Ok(());
        }
        let mut entries: Vec<PathBuf> =
            std::fs::read_dir(dir)?.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect();
        entries.sort();
        for e in entries {
            walk(&e, depth - 1, out)?;
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, 4, &mut out)?;
    Ok(out)
}

/// Numbered files `prefix<N>.pb` in `dir`, in numeric order; fails on a gap.
fn numbered(dir: &Path, prefix: &str) -> Result<Vec<PathBuf>, String> {
    let mut found: BTreeMap<usize, PathBuf> = BTreeMap::new();
    for e in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let e = e.map_err(|e| e.to_string())?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(n) = name.strip_prefix(prefix).and_then(|r| r.strip_suffix(".pb")).and_then(|n| n.parse().ok()) {
            found.insert(n, e.path());
        }
    }
    for (i, &n) in found.keys().enumerate() {
        if n != i {
            return Err(format!("{}: {prefix}{i}.pb is missing", dir.display()));
        }
    }
    Ok(found.into_values().collect())
}

fn data_sets(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut sets: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix("test_data_set_")?.parse().ok()?;
            e.path().is_dir().then_some((n, e.path()))
        })
        .collect();
    sets.sort();
    if sets.is_empty() {
        return Err("no test_data_set_* folder".into());
    }
    Ok(sets.into_iter().map(|(_, p)| p).collect())
}

/// `data.json` overrides, as the ONNX test loader reads them.
pub fn case_tolerance(dir: &Path) -> Result<Tolerance, String> {
    let path = dir.join("data.json");
    let mut tol = Tolerance::default();
    if !path.exists() {
        return Ok(tol);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(r) = v.get("rtol").and_then(|x| x.as_f64()) {
        tol.rtol = r;
    }
    if let Some(a) = v.get("atol").and_then(|x| x.as_f64()) {
        tol.atol = a;
    }
    Ok(tol)
}

/// A loaded model, as the runner needs it.
pub trait LoadedModel {
    fn input_names(&self) -> Vec<String>;
    fn run(&mut self, inputs: Vec<(String, Tensor)>) -> tessera_core::Result<Vec<(String, Tensor)>>;
}

/// What runs the models: Tessera in the CLI, fakes in the tests.
pub trait Engine: Send + Sync + 'static {
    fn open(&self, model: &Path, threads: usize) -> tessera_core::Result<Box<dyn LoadedModel>>;
    fn read_tensor(&self, bytes: &[u8]) -> tessera_core::Result<(String, Tensor)>;
}

struct Tessera;

struct TesseraModel(tessera::Session);

impl LoadedModel for TesseraModel {
    fn input_names(&self) -> Vec<String> {
        self.0.inputs().iter().map(|v| v.name.clone()).collect()
    }
    fn run(&mut self, inputs: Vec<(String, Tensor)>) -> tessera_core::Result<Vec<(String, Tensor)>> {
        self.0.run(inputs)
    }
}

impl Engine for Tessera {
    fn open(&self, model: &Path, threads: usize) -> tessera_core::Result<Box<dyn LoadedModel>> {
        let opts = tessera::SessionOptions { threads, ..Default::default() };
        Ok(Box::new(TesseraModel(tessera::Session::from_file(model, opts)?)))
    }
    fn read_tensor(&self, bytes: &[u8]) -> tessera_core::Result<(String, Tensor)> {
        tessera_onnx::load_tensor_proto(bytes)
    }
}

/// Runs one case to completion on the current thread (no timeout, no panic
/// guard: see [`run_guarded`]).
pub fn run_case(engine: &dyn Engine, dir: &Path, threads: usize) -> Outcome {
    let tol = match case_tolerance(dir) {
        Ok(t) => t,
        Err(e) => return Outcome::new(Class::Error, format!("harness: {e}")),
    };
    let model_path = dir.join("model.onnx");
    let io = std::fs::read(&model_path).ok().and_then(|b| graph_io(&b));
    let mut model = match engine.open(&model_path, threads) {
        Ok(m) => m,
        Err(e) => return classify_error("load", &e),
    };
    // Test data of non-tensor graph values is stored as SequenceProto /
    // OptionalProto / MapProto, which the tensor-only Session API cannot take
    // or return. The model loaded, so say so rather than misreading the files.
    if let Some(io) = &io {
        if let Some((name, kind)) =
            io.inputs.iter().chain(&io.outputs).find(|(_, k)| !matches!(k, ValueKind::Tensor(_)))
        {
            return Outcome::new(
                Class::UnsupportedOp,
                format!("graph value '{name}' is a {}; the Session API is tensor-only", kind.describe()),
            );
        }
    }
    let sets = match data_sets(dir) {
        Ok(s) => s,
        Err(e) => return Outcome::new(Class::Error, format!("harness: {e}")),
    };
    let names = model.input_names();
    for set in sets {
        let set_name = set.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let (in_files, out_files) = match (numbered(&set, "input_"), numbered(&set, "output_")) {
            (Ok(i), Ok(o)) => (i, o),
            (Err(e), _) | (_, Err(e)) => return Outcome::new(Class::Error, format!("harness: {e}")),
        };
        let read = |p: &Path| -> Result<(String, Tensor), Outcome> {
            let bytes =
                std::fs::read(p).map_err(|e| Outcome::new(Class::Error, format!("harness: {}: {e}", p.display())))?;
            let file = p.file_name().unwrap_or_default().to_string_lossy();
            engine.read_tensor(&bytes).map_err(|e| classify_error(&format!("{set_name}/{file}"), &e))
        };
        let mut feeds = Vec::with_capacity(in_files.len());
        if in_files.len() > names.len() {
            return Outcome::new(
                Class::Error,
                format!("{set_name}: {} input files for {} model inputs {names:?}", in_files.len(), names.len()),
            );
        }
        for (k, p) in in_files.iter().enumerate() {
            let (name, t) = match read(p) {
                Ok(v) => v,
                Err(o) => return o,
            };
            // Match by the stored name when it is a model input, else by
            // position (the ONNX runner feeds inputs positionally).
            let name = if names.contains(&name) { name } else { names[k].clone() };
            feeds.push((name, t));
        }
        let mut expected = Vec::with_capacity(out_files.len());
        for p in &out_files {
            match read(p) {
                Ok((_, t)) => expected.push(t),
                Err(o) => return o,
            }
        }
        let outputs = match model.run(feeds) {
            Ok(o) => o,
            Err(e) => return classify_error(&format!("run {set_name}"), &e),
        };
        if outputs.len() != expected.len() {
            return Outcome::new(
                Class::WrongResult,
                format!("{set_name}: {} outputs, expected {}", outputs.len(), expected.len()),
            );
        }
        for (j, ((name, got), want)) in outputs.iter().zip(&expected).enumerate() {
            if let Err(why) = compare(want, got, tol) {
                return Outcome::new(Class::WrongResult, format!("{set_name} output {j} '{name}': {why}"));
            }
        }
    }
    Outcome::pass()
}

// ---------------------------------------------------------------------------
// Panic and time guard
// ---------------------------------------------------------------------------

thread_local! {
    /// Set on case threads: the panic hook stores the message here instead of printing it.
    static CASE_PANIC: std::cell::RefCell<Option<Option<String>>> = const { std::cell::RefCell::new(None) };
}

/// Installs (once) a panic hook that records panics of case threads with
/// their location and leaves other threads' panics to the default hook.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let handled = CASE_PANIC.with(|c| {
                let mut c = c.borrow_mut();
                match c.as_mut() {
                    Some(slot) => {
                        let loc = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
                        *slot = Some(format!("{}{loc}", payload_text(info.payload())));
                        true
                    }
                    None => false,
                }
            });
            if !handled {
                default(info);
            }
        }));
    });
}

fn payload_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".into()
    }
}

/// Runs `f` on a fresh thread, classifying a panic as [`Class::Crash`] and
/// running past `limit` as [`Class::Timeout`]. A timed-out thread cannot be
/// stopped; it is left running detached (the process exits at the end).
pub fn run_guarded<F>(f: F, limit: Duration) -> Outcome
where
    F: FnOnce() -> Outcome + Send + 'static,
{
    install_panic_hook();
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new().name("conformance-case".into()).stack_size(64 << 20).spawn(move || {
        CASE_PANIC.with(|c| *c.borrow_mut() = Some(None));
        let r = catch_unwind(AssertUnwindSafe(f));
        let recorded = CASE_PANIC.with(|c| c.borrow_mut().take().flatten());
        let outcome = match r {
            Ok(o) => o,
            Err(p) => Outcome::new(Class::Crash, format!("panic: {}", recorded.unwrap_or_else(|| payload_text(&*p)))),
        };
        let _ = tx.send(outcome);
    });
    if let Err(e) = spawned {
        return Outcome::new(Class::Error, format!("harness: cannot spawn a thread: {e}"));
    }
    match rx.recv_timeout(limit) {
        Ok(o) => o,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            Outcome::new(Class::Timeout, format!("still running after {:.1} s", limit.as_secs_f64()))
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Outcome::new(Class::Crash, "case thread ended without a result (panic while panicking?)")
        }
    }
}

/// Result of one case in the run.
#[derive(Clone, Debug)]
pub struct CaseResult {
    pub id: String,
    pub outcome: Outcome,
    pub seconds: f64,
}

/// Runs `cases` on `jobs` workers, each case guarded by [`run_guarded`].
pub fn run_all(
    engine: Arc<dyn Engine>,
    cases: &[Case],
    jobs: usize,
    threads: usize,
    limit: Duration,
    on_done: &(dyn Fn(usize, &CaseResult) + Sync),
) -> Vec<CaseResult> {
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<CaseResult>>> = Mutex::new(vec![None; cases.len()]);
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(case) = cases.get(i) else { break };
                let engine = engine.clone();
                let dir = case.dir.clone();
                let t0 = Instant::now();
                let outcome = run_guarded(move || run_case(&*engine, &dir, threads), limit);
                let r = CaseResult { id: case.id.clone(), outcome, seconds: t0.elapsed().as_secs_f64() };
                on_done(done.fetch_add(1, Ordering::SeqCst) + 1, &r);
                results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
            });
        }
    });
    results.into_inner().unwrap_or_else(|e| e.into_inner()).into_iter().flatten().collect()
}

// ---------------------------------------------------------------------------
// Reports and the expected list
// ---------------------------------------------------------------------------

/// Counts per class, in [`Class::ALL`] order.
pub fn totals(results: &[CaseResult]) -> Vec<(Class, usize)> {
    Class::ALL.iter().map(|&c| (c, results.iter().filter(|r| r.outcome.class == c).count())).collect()
}

fn one_line(s: &str, max: usize) -> String {
    let s: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if s.chars().count() > max {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    } else {
        s
    }
}

/// A detail with the case-specific parts (quoted names, numbers) blanked, so
/// that the same failure in many cases groups together.
pub fn reason_key(detail: &str) -> String {
    // File paths (tokens with a '/') name the case: drop them.
    let detail: Vec<String> = detail
        .split(' ')
        .map(|w| {
            if w.contains('/') {
                if w.ends_with(':') {
                    "<path>:".into()
                } else {
                    "<path>".into()
                }
            } else {
                w.to_string()
            }
        })
        .collect();
    let detail = detail.join(" ");
    let mut out = String::new();
    let mut in_quote = false;
    let mut last_digit = false;
    for c in detail.chars() {
        if c == '\'' {
            if !in_quote {
                out.push_str("'…'");
            }
            in_quote = !in_quote;
            continue;
        }
        if in_quote {
            continue;
        }
        if c.is_ascii_digit() {
            if !last_digit {
                out.push('N');
            }
            last_digit = true;
            continue;
        }
        last_digit = false;
        out.push(c);
    }
    one_line(&out, 140)
}

/// Counts per case kind (the id's first part: `node`, `light`, ...) and class.
pub fn totals_by_kind(results: &[CaseResult]) -> BTreeMap<String, Vec<(Class, usize)>> {
    let mut kinds: BTreeMap<String, Vec<CaseResult>> = BTreeMap::new();
    for r in results {
        let kind = r.id.split('/').next().unwrap_or("").to_string();
        kinds.entry(kind).or_default().push(r.clone());
    }
    kinds.into_iter().map(|(k, rs)| (k, totals(&rs))).collect()
}

pub fn markdown(results: &[CaseResult], roots: &[PathBuf]) -> String {
    let mut md = String::from("# Tessera conformance report\n\n");
    let _ =
        writeln!(md, "Roots: {}\n", roots.iter().map(|r| format!("`{}`", r.display())).collect::<Vec<_>>().join(", "));
    md.push_str("| class | cases |\n| --- | ---: |\n");
    for (c, n) in totals(results) {
        let _ = writeln!(md, "| {} | {n} |", c.name());
    }
    let _ = writeln!(md, "| total | {} |\n", results.len());

    md.push_str("| kind |");
    for c in Class::ALL {
        let _ = write!(md, " {} |", c.name());
    }
    md.push_str(" total |\n| --- |");
    md.push_str(&" ---: |".repeat(Class::ALL.len() + 1));
    md.push('\n');
    for (kind, t) in totals_by_kind(results) {
        let _ = write!(md, "| {kind} |");
        for (_, n) in &t {
            let _ = write!(md, " {n} |");
        }
        let _ = writeln!(md, " {} |", t.iter().map(|(_, n)| n).sum::<usize>());
    }
    md.push('\n');

    md.push_str("## Most common reasons (non-passing cases)\n\n| class | cases | reason |\n| --- | ---: | --- |\n");
    let mut groups: BTreeMap<(Class, String), usize> = BTreeMap::new();
    for r in results.iter().filter(|r| r.outcome.class != Class::Pass) {
        *groups.entry((r.outcome.class, reason_key(&r.outcome.detail))).or_default() += 1;
    }
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    for ((c, k), n) in groups.iter().take(60) {
        let _ = writeln!(md, "| {} | {n} | {} |", c.name(), k.replace('|', "\\|"));
    }

    md.push_str("\n## All cases\n\n| case | class | ms | detail |\n| --- | --- | ---: | --- |\n");
    for r in results {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {} |",
            r.id,
            r.outcome.class.name(),
            r.seconds * 1e3,
            one_line(&r.outcome.detail, 300).replace('|', "\\|")
        );
    }
    md
}

pub fn tsv(results: &[CaseResult]) -> String {
    let mut t = String::from("case\tclass\tms\tdetail\n");
    for r in results {
        let _ = writeln!(
            t,
            "{}\t{}\t{:.1}\t{}",
            r.id,
            r.outcome.class.name(),
            r.seconds * 1e3,
            one_line(&r.outcome.detail, 2000).replace('\t', " ")
        );
    }
    t
}

/// Case ids of an expected list: one per line, `#` starts a comment.
pub fn parse_expected(text: &str) -> BTreeSet<String> {
    text.lines().map(|l| l.split('#').next().unwrap_or("").trim()).filter(|l| !l.is_empty()).map(String::from).collect()
}

/// Listed cases that did not pass (or were not found), given which cases
/// were selected to run.
pub fn regressions(
    expected: &BTreeSet<String>,
    results: &[CaseResult],
    selected: &dyn Fn(&str) -> bool,
) -> Vec<(String, String)> {
    let by_id: BTreeMap<&str, &CaseResult> = results.iter().map(|r| (r.id.as_str(), r)).collect();
    expected
        .iter()
        .filter(|id| selected(id))
        .filter_map(|id| match by_id.get(id.as_str()) {
            None => Some((id.clone(), "not found under the roots".to_string())),
            Some(r) if r.outcome.class != Class::Pass => {
                Some((id.clone(), format!("{}: {}", r.outcome.class.name(), one_line(&r.outcome.detail, 300))))
            }
            Some(_) => None,
        })
        .collect()
}

/// New contents of the expected list: the passing cases, plus (when only
/// some cases ran) the old entries outside the selection.
pub fn expected_text(old: &BTreeSet<String>, results: &[CaseResult], selected: &dyn Fn(&str) -> bool) -> String {
    let mut ids: BTreeSet<String> = old.iter().filter(|id| !selected(id)).cloned().collect();
    ids.extend(results.iter().filter(|r| r.outcome.class == Class::Pass).map(|r| r.id.clone()));
    let mut s = String::from(
        "# Cases `tessera conformance` must pass (scripts/test fails if one does not).\n\
         # Regenerate: tessera conformance --expected conformance/expected_pass.txt --write-expected\n\
         # (see conformance/README.md). One case id (<kind>/<name>) per line.\n",
    );
    for id in ids {
        s.push_str(&id);
        s.push('\n');
    }
    s
}

// ---------------------------------------------------------------------------
// The command
// ---------------------------------------------------------------------------

/// Default roots, looked up from the current directory upwards.
fn default_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    let Ok(cwd) = std::env::current_dir() else { return roots };
    for base in cwd.ancestors() {
        let node = base.join(".cache/onnx-node-tests");
        let venv = base.join(".venv/lib");
        if !node.exists() && !venv.exists() {
            continue;
        }
        roots.push(node);
        roots.push(base.join(".cache/onnx-light-tests"));
        roots.push(base.join(".cache/onnx-contrib-tests"));
        if let Ok(rd) = std::fs::read_dir(&venv) {
            let mut pys: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
            pys.sort();
            if let Some(py) = pys.last() {
                let data = py.join("site-packages/onnx/backend/test/data");
                for kind in ["pytorch-converted", "pytorch-operator", "simple"] {
                    roots.push(data.join(kind));
                }
            }
        }
        break;
    }
    roots
}

pub fn run(args: &ConformanceArgs) -> Result<i32, String> {
    run_with(args, Arc::new(Tessera))
}

pub fn run_with(args: &ConformanceArgs, engine: Arc<dyn Engine>) -> Result<i32, String> {
    let explicit = !args.roots.is_empty();
    let roots = if explicit { args.roots.clone() } else { default_roots() };
    if roots.is_empty() {
        return Err("no case roots given and none found (run scripts/gen_node_tests.py, or pass directories)".into());
    }
    let mut cases = Vec::new();
    for root in &roots {
        if !root.is_dir() {
            if explicit {
                return Err(format!("{}: not a directory", root.display()));
            }
            eprintln!("warning: default root {} is missing (scripts/gen_node_tests.py, gen_light_tests.py and gen_contrib_tests.py make the .cache ones)", root.display());
            continue;
        }
        cases.extend(discover(root).map_err(|e| format!("{}: {e}", root.display()))?);
    }
    let mut seen = BTreeSet::new();
    cases.retain(|c| {
        let fresh = seen.insert(c.id.clone());
        if !fresh {
            eprintln!("warning: duplicate case id {} at {} (ignored)", c.id, c.dir.display());
        }
        fresh
    });
    let filters = args.filter.clone();
    let selected = move |id: &str| filters.is_empty() || filters.iter().any(|f| id.contains(f.as_str()));
    cases.retain(|c| selected(&c.id));
    if cases.is_empty() {
        return Err("no cases found".into());
    }

    let n = cases.len();
    eprintln!(
        "conformance: {n} cases, {} jobs x {} threads, {:.0} s limit per case",
        args.jobs, args.threads, args.timeout
    );
    let verbose = args.verbose;
    let step = (n / 20).max(1);
    let t0 = Instant::now();
    let progress = move |k: usize, r: &CaseResult| {
        if verbose && r.outcome.class != Class::Pass {
            eprintln!("  {:<14} {}  {}", r.outcome.class.name(), r.id, one_line(&r.outcome.detail, 200));
        }
        if k.is_multiple_of(step) || k == n {
            eprintln!("  [{k}/{n}] {:.0} s", t0.elapsed().as_secs_f64());
        }
    };
    let limit = Duration::from_secs_f64(args.timeout.max(0.001));
    let results = run_all(engine, &cases, args.jobs, args.threads, limit, &progress);

    if let Some(path) = &args.report {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(path, markdown(&results, &roots)).map_err(|e| format!("{}: {e}", path.display()))?;
        let tsv_path = path.with_extension("tsv");
        std::fs::write(&tsv_path, tsv(&results)).map_err(|e| format!("{}: {e}", tsv_path.display()))?;
        eprintln!("report: {} and {}", path.display(), tsv_path.display());
    }

    let summary: Vec<String> = totals(&results).iter().map(|(c, k)| format!("{} {k}", c.name())).collect();
    println!("conformance: {} cases: {} ({:.0} s)", results.len(), summary.join(", "), t0.elapsed().as_secs_f64());
    for (kind, t) in totals_by_kind(&results) {
        let line: Vec<String> = t.iter().filter(|(_, k)| *k > 0).map(|(c, k)| format!("{} {k}", c.name())).collect();
        println!("  {kind}: {}", line.join(", "));
    }
    for r in results.iter().filter(|r| r.outcome.class == Class::Crash) {
        println!("  CRASH (a bug) {}: {}", r.id, one_line(&r.outcome.detail, 300));
    }

    let mut code = 0;
    if let Some(path) = &args.expected {
        let old = if path.exists() {
            parse_expected(&std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?)
        } else if args.write_expected {
            BTreeSet::new()
        } else {
            return Err(format!("{}: no such expected list", path.display()));
        };
        if args.write_expected {
            let text = expected_text(&old, &results, &selected);
            std::fs::write(path, &text).map_err(|e| format!("{}: {e}", path.display()))?;
            println!("wrote {} ({} cases)", path.display(), parse_expected(&text).len());
        } else {
            let bad = regressions(&old, &results, &selected);
            let listed_run = old.iter().filter(|id| selected(id)).count();
            let new_passes: Vec<&str> = results
                .iter()
                .filter(|r| r.outcome.class == Class::Pass && !old.contains(&r.id))
                .map(|r| r.id.as_str())
                .collect();
            if !new_passes.is_empty() {
                println!(
                    "{} cases pass that {} does not list (add them with --write-expected)",
                    new_passes.len(),
                    path.display()
                );
            }
            if bad.is_empty() {
                println!("expected: all {listed_run} listed cases pass");
            } else {
                println!("expected: {} of {listed_run} listed cases do not pass:", bad.len());
                for (id, why) in &bad {
                    println!("  {id}: {why}");
                }
                code = 1;
            }
        }
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32t(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::from_slice(shape, v).unwrap()
    }

    #[test]
    fn float_tolerance_matches_assert_allclose() {
        let tol = Tolerance::default();
        let e = f32t(&[3], &[1.0, 100.0, 0.0]);
        // |a - e| <= 1e-7 + 1e-3 * |e|
        assert!(compare(&e, &f32t(&[3], &[1.0009, 100.09, 0.0]), tol).is_ok());
        let err = compare(&e, &f32t(&[3], &[1.0, 100.2, 0.0]), tol).unwrap_err();
        assert!(err.contains("1 of 3 values differ; first at [1]"), "{err}");
        // atol alone governs expected zeros.
        assert!(compare(&e, &f32t(&[3], &[1.0, 100.0, 5e-8]), tol).is_ok());
        assert!(compare(&e, &f32t(&[3], &[1.0, 100.0, 1e-6]), tol).is_err());
        // The tolerance is relative to the expected value, not the actual one.
        let e1 = f32t(&[1], &[1.0]);
        assert!(compare(&e1, &f32t(&[1], &[1.0015]), Tolerance { rtol: 2e-3, atol: 0.0 }).is_ok());
        assert!(compare(&e1, &f32t(&[1], &[1.0015]), tol).is_err());
    }

    #[test]
    fn nan_equals_nan_and_infinities_must_match() {
        let tol = Tolerance::default();
        let e = f32t(&[3], &[f32::NAN, f32::INFINITY, f32::NEG_INFINITY]);
        assert!(compare(&e, &f32t(&[3], &[f32::NAN, f32::INFINITY, f32::NEG_INFINITY]), tol).is_ok());
        assert!(compare(&e, &f32t(&[3], &[0.0, f32::INFINITY, f32::NEG_INFINITY]), tol).is_err());
        assert!(compare(&e, &f32t(&[3], &[f32::NAN, f32::NEG_INFINITY, f32::NEG_INFINITY]), tol).is_err());
        assert!(compare(&e, &f32t(&[3], &[f32::NAN, f32::MAX, f32::NEG_INFINITY]), tol).is_err());
        // NaN produced where a number was expected.
        let err = compare(&f32t(&[2], &[1.0, 2.0]), &f32t(&[2], &[1.0, f32::NAN]), tol).unwrap_err();
        assert!(err.contains("first at [1]") && err.contains("NaN"), "{err}");
    }

    #[test]
    fn dtype_and_shape_must_match() {
        let tol = Tolerance::default();
        let e = f32t(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let err = compare(&e, &f32t(&[4], &[1.0, 2.0, 3.0, 4.0]), tol).unwrap_err();
        assert!(err.starts_with("shape: expected [2, 2], got [4]"), "{err}");
        let err = compare(&e, &Tensor::from_slice(&[2, 2], &[1.0f64, 2.0, 3.0, 4.0]).unwrap(), tol).unwrap_err();
        assert_eq!(err, "dtype: expected f32, got f64");
        let scalar = f32t(&[], &[1.0]);
        assert!(compare(&scalar, &f32t(&[1], &[1.0]), tol).unwrap_err().starts_with("shape"));
        assert!(compare(&scalar, &f32t(&[], &[1.0]), tol).is_ok());
        // Empty tensors compare by shape only.
        assert!(compare(&f32t(&[0, 3], &[]), &f32t(&[0, 3], &[]), tol).is_ok());
        assert!(compare(&f32t(&[0, 3], &[]), &f32t(&[3, 0], &[]), tol).is_err());
    }

    #[test]
    fn integers_and_bools_are_exact() {
        let tol = Tolerance::default();
        let e = Tensor::from_slice(&[2], &[1_000_000i64, -3]).unwrap();
        assert!(compare(&e, &Tensor::from_slice(&[2], &[1_000_000i64, -3]).unwrap(), tol).is_ok());
        let err = compare(&e, &Tensor::from_slice(&[2], &[1_000_001i64, -3]).unwrap(), tol).unwrap_err();
        assert!(err.contains("expected 1000000, got 1000001"), "{err}");
        let u = Tensor::from_slice(&[1], &[u64::MAX]).unwrap();
        assert!(compare(&u, &Tensor::from_slice(&[1], &[u64::MAX - 1]).unwrap(), tol).is_err());
        let b = Tensor::from_bytes(DType::Bool, &[3], &[1, 0, 1]).unwrap();
        assert!(compare(&b, &Tensor::from_bytes(DType::Bool, &[3], &[1, 0, 1]).unwrap(), tol).is_ok());
        assert!(compare(&b, &Tensor::from_bytes(DType::Bool, &[3], &[1, 1, 1]).unwrap(), tol).is_err());
        // A bool is not a u8.
        assert!(compare(&b, &Tensor::from_slice(&[3], &[1u8, 0, 1]).unwrap(), tol).is_err());
    }

    #[test]
    fn half_types() {
        use half::{bf16, f16};
        let tol = Tolerance::default();
        let e = Tensor::from_slice(&[1], &[f16::from_f32(1.0)]).unwrap();
        assert!(compare(&e, &Tensor::from_slice(&[1], &[f16::from_f32(1.0)]).unwrap(), tol).is_ok());
        // One f16 ulp at 1.0 is 2^-10 ~ 9.8e-4 <= 1e-3.
        assert!(compare(&e, &Tensor::from_slice(&[1], &[f16::from_f32(1.0 + 1.0 / 1024.0)]).unwrap(), tol).is_ok());
        assert!(compare(&e, &Tensor::from_slice(&[1], &[f16::from_f32(1.0 + 2.0 / 1024.0)]).unwrap(), tol).is_err());
        // bfloat16 gets rtol max(rtol, 2^-6): two ulps at 1.0 pass, three fail.
        let e = Tensor::from_slice(&[1], &[bf16::from_f32(1.0)]).unwrap();
        let two = bf16::from_f32(1.0 + 2.0 / 128.0);
        let three = bf16::from_f32(1.0 + 3.0 / 128.0);
        assert!(compare(&e, &Tensor::from_slice(&[1], &[two]).unwrap(), tol).is_ok());
        assert!(compare(&e, &Tensor::from_slice(&[1], &[three]).unwrap(), tol).is_err());
    }

    #[test]
    fn mismatch_index_is_multidimensional() {
        let e = f32t(&[2, 3], &[0.0; 6]);
        let mut a = vec![0.0f32; 6];
        a[4] = 1.0;
        let err = compare(&e, &f32t(&[2, 3], &a), Tolerance::default()).unwrap_err();
        assert!(err.contains("first at [1, 1]"), "{err}");
        assert_eq!(unravel(5, &[2, 3]), vec![1, 2]);
        assert_eq!(unravel(0, &[]), Vec::<usize>::new());
    }

    #[test]
    fn error_classification() {
        let c = |e: Error| classify_error("load", &e).class;
        assert_eq!(c(Error::Unsupported("op Foo".into())), Class::UnsupportedOp);
        assert_eq!(
            c(Error::Node { node: "n".into(), op: "Conv".into(), msg: "unsupported auto_pad VALID".into() }),
            Class::UnsupportedOp
        );
        assert_eq!(c(Error::Other("op 'Bar' is not supported".into())), Class::UnsupportedOp);
        assert_eq!(c(Error::Shape("bad broadcast".into())), Class::Error);
        assert_eq!(c(Error::InvalidModel("truncated".into())), Class::Error);
        let o = classify_error("run test_data_set_0", &Error::Input("missing x".into()));
        assert_eq!(o.detail, "run test_data_set_0: input error: missing x");
    }

    #[test]
    fn guard_catches_panics_and_timeouts() {
        let o = run_guarded(Outcome::pass, Duration::from_secs(5));
        assert_eq!(o, Outcome::pass());
        let o = run_guarded(|| panic!("index out of bounds: the len is 3"), Duration::from_secs(5));
        assert_eq!(o.class, Class::Crash);
        assert!(o.detail.contains("index out of bounds: the len is 3"), "{}", o.detail);
        assert!(o.detail.contains("conformance.rs:"), "location missing: {}", o.detail);
        let o = run_guarded(
            || {
                let v: Vec<u8> = Vec::new();
                #[allow(clippy::unnecessary_operation)]
                Outcome::new(Class::Pass, format!("{}", v[usize::MAX / 2]))
            },
            Duration::from_secs(5),
        );
        assert_eq!(o.class, Class::Crash);
        let t0 = Instant::now();
        let o = run_guarded(
            || {
                std::thread::sleep(Duration::from_secs(3));
                Outcome::pass()
            },
            Duration::from_millis(100),
        );
        assert_eq!(o.class, Class::Timeout);
        assert!(t0.elapsed() < Duration::from_secs(2));
    }

    // ----- a fake engine to drive whole cases through run_case / run_all -----

    /// Test tensors on disk: the name, a NUL, then little-endian f32 values (1-D).
    fn write_t(path: &Path, name: &str, v: &[f32]) {
        let mut b = name.as_bytes().to_vec();
        b.push(0);
        for x in v {
            b.extend_from_slice(&x.to_le_bytes());
        }
        std::fs::write(path, b).unwrap();
    }

    struct Fake;
    struct FakeModel(String);

    impl LoadedModel for FakeModel {
        fn input_names(&self) -> Vec<String> {
            vec!["x".into()]
        }
        fn run(&mut self, inputs: Vec<(String, Tensor)>) -> tessera_core::Result<Vec<(String, Tensor)>> {
            let x = inputs[0].1.as_slice::<f32>()?.to_vec();
            let y: Vec<f32> = match self.0.as_str() {
                "double" => x.iter().map(|v| v * 2.0).collect(),
                "wrong" => x.iter().map(|v| v * 3.0).collect(),
                "panic" => panic!("kernel bug"),
                "hang" => {
                    std::thread::sleep(Duration::from_secs(5));
                    x
                }
                "fail" => return Err(Error::Shape("broadcast [2] with [3]".into())),
                _ => x,
            };
            Ok(vec![("y".into(), Tensor::from_vec(&[y.len()], y)?)])
        }
    }

    impl Engine for Fake {
        fn open(&self, model: &Path, _threads: usize) -> tessera_core::Result<Box<dyn LoadedModel>> {
            let kind = std::fs::read_to_string(model)?;
            if kind.starts_with("unsupported") {
                return Err(Error::Unsupported("op 'Frobnicate' (domain '') opset 99".into()));
            }
            Ok(Box::new(FakeModel(kind.trim().to_string())))
        }
        fn read_tensor(&self, bytes: &[u8]) -> tessera_core::Result<(String, Tensor)> {
            let nul = bytes.iter().position(|&b| b == 0).ok_or_else(|| Error::Other("bad".into()))?;
            let name = String::from_utf8_lossy(&bytes[..nul]).into_owned();
            let v: Vec<f32> =
                bytes[nul + 1..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            Ok((name, Tensor::from_vec(&[v.len()], v)?))
        }
    }

    fn make_case(root: &Path, kind: &str, name: &str, behaviour: &str, expect_double: bool) -> PathBuf {
        let dir = root.join(kind).join(name);
        let ds = dir.join("test_data_set_0");
        std::fs::create_dir_all(&ds).unwrap();
        std::fs::write(dir.join("model.onnx"), behaviour).unwrap();
        write_t(&ds.join("input_0.pb"), "", &[1.0, 2.0]);
        let m = if expect_double { 2.0 } else { 1.0 };
        write_t(&ds.join("output_0.pb"), "y", &[m, 2.0 * m]);
        dir
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tessera-conformance-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn whole_cases_are_classified() {
        let root = tempdir("classes");
        for (name, b) in [
            ("test_pass", "double"),
            ("test_wrong", "wrong"),
            ("test_panic", "panic"),
            ("test_hang", "hang"),
            ("test_fail", "fail"),
            ("test_unsup", "unsupported"),
        ] {
            make_case(&root, "node", name, b, true);
        }
        // A second data set that fails, and a data.json that loosens rtol.
        let d = make_case(&root, "node", "test_set1", "double", true);
        std::fs::create_dir_all(d.join("test_data_set_1")).unwrap();
        write_t(&d.join("test_data_set_1/input_0.pb"), "x", &[1.0]);
        write_t(&d.join("test_data_set_1/output_0.pb"), "y", &[2.01]);
        let d = make_case(&root, "light", "test_loose", "double", true);
        write_t(&d.join("test_data_set_0/output_0.pb"), "y", &[2.01, 4.02]);
        std::fs::write(d.join("data.json"), r#"{"atol": 1e-07, "rtol": 0.01}"#).unwrap();
        // A missing input file number is a harness error, not a pass.
        let d = make_case(&root, "node", "test_gap", "double", true);
        std::fs::rename(d.join("test_data_set_0/input_0.pb"), d.join("test_data_set_0/input_1.pb")).unwrap();

        let cases = discover(&root).unwrap();
        let ids: Vec<&str> = cases.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids.len(), 9, "{ids:?}");
        assert!(ids.contains(&"light/test_loose") && ids.contains(&"node/test_pass"));

        let results = run_all(Arc::new(Fake), &cases, 2, 1, Duration::from_millis(1500), &|_, _| {});
        let class: BTreeMap<&str, Class> = results.iter().map(|r| (r.id.as_str(), r.outcome.class)).collect();
        assert_eq!(class["node/test_pass"], Class::Pass);
        assert_eq!(class["node/test_wrong"], Class::WrongResult);
        assert_eq!(class["node/test_panic"], Class::Crash);
        assert_eq!(class["node/test_hang"], Class::Timeout);
        assert_eq!(class["node/test_fail"], Class::Error);
        assert_eq!(class["node/test_unsup"], Class::UnsupportedOp);
        assert_eq!(class["node/test_set1"], Class::WrongResult);
        assert_eq!(class["light/test_loose"], Class::Pass);
        assert_eq!(class["node/test_gap"], Class::Error);
        let by = |id: &str| results.iter().find(|r| r.id == id).unwrap().outcome.detail.clone();
        assert!(by("node/test_wrong").starts_with("test_data_set_0 output 0 'y': 2 of 2 values differ"));
        assert!(by("node/test_set1").starts_with("test_data_set_1 output 0"));
        assert!(by("node/test_panic").contains("kernel bug"));
        assert_eq!(by("node/test_fail"), "run test_data_set_0: shape error: broadcast [2] with [3]");

        // Totals, reports, expected-list handling.
        let t: BTreeMap<Class, usize> = totals(&results).into_iter().collect();
        assert_eq!((t[&Class::Pass], t[&Class::WrongResult], t[&Class::Error]), (2, 2, 2));
        let md = markdown(&results, std::slice::from_ref(&root));
        assert!(md.contains("| node/test_wrong | wrong-result |"));
        assert!(md.contains("| light | 1 | 0 | 0 | 0 | 0 | 0 | 1 |"), "{md}");
        assert!(md.contains("| node | 1 | 2 | 1 | 2 | 1 | 1 | 8 |"), "{md}");
        let tsv = tsv(&results);
        assert_eq!(tsv.lines().count(), 10);
        assert!(tsv.lines().all(|l| l.split('\t').count() == 4));

        let expected = parse_expected("# comment\nnode/test_pass\nnode/test_wrong  # flaky?\n\nnode/test_gone\n");
        assert_eq!(expected.len(), 3);
        let all = |_: &str| true;
        let bad = regressions(&expected, &results, &all);
        assert_eq!(bad.iter().map(|b| b.0.as_str()).collect::<Vec<_>>(), ["node/test_gone", "node/test_wrong"]);
        assert!(bad[1].1.starts_with("wrong-result: "));
        // With a filter only the selected entries are checked and the others kept.
        let only_pass = |id: &str| id.contains("pass");
        assert!(regressions(&expected, &results, &only_pass).is_empty());
        let text = expected_text(&expected, &results, &only_pass);
        let new = parse_expected(&text);
        assert!(new.contains("node/test_gone") && new.contains("node/test_wrong") && new.contains("node/test_pass"));
        let text = expected_text(&expected, &results, &all);
        assert_eq!(parse_expected(&text).into_iter().collect::<Vec<_>>(), ["light/test_loose", "node/test_pass"]);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn run_with_writes_reports_and_checks_the_list() {
        let root = tempdir("cmd");
        make_case(&root, "node", "test_ok", "double", true);
        make_case(&root, "node", "test_bad", "wrong", true);
        let list = root.join("expected.txt");
        let report = root.join("out/report.md");
        let mut args = ConformanceArgs {
            roots: vec![root.join("node")],
            filter: vec![],
            jobs: 2,
            threads: 1,
            timeout: 5.0,
            report: Some(report.clone()),
            expected: Some(list.clone()),
            write_expected: true,
            verbose: false,
        };
        assert_eq!(run_with(&args, Arc::new(Fake)), Ok(0));
        assert_eq!(parse_expected(&std::fs::read_to_string(&list).unwrap()).len(), 1);
        assert!(report.exists() && root.join("out/report.tsv").exists());
        args.write_expected = false;
        assert_eq!(run_with(&args, Arc::new(Fake)), Ok(0));
        std::fs::write(&list, "node/test_ok\nnode/test_bad\n").unwrap();
        assert_eq!(run_with(&args, Arc::new(Fake)), Ok(1));
        args.filter = vec!["ok".into()];
        assert_eq!(run_with(&args, Arc::new(Fake)), Ok(0));
        args.filter = vec!["nothing-matches".into()];
        assert!(run_with(&args, Arc::new(Fake)).is_err());
        args.roots = vec![root.join("missing")];
        assert!(run_with(&args, Arc::new(Fake)).is_err());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn reason_keys_group_similar_failures() {
        assert_eq!(
            reason_key("load: node 'conv_12' (Conv): unsupported auto_pad 'VALID' in 3 dims"),
            reason_key("load: node 'x' (Conv): unsupported auto_pad 'SAME_UPPER' in 2 dims")
        );
        assert_eq!(
            reason_key("load: unsupported: /x/node/test_a/model.onnx: graph input 'x': string tensors"),
            "load: unsupported: <path>: graph input '…': string tensors"
        );
        assert_eq!(one_line("a\nb\tc", 10), "a b c");
        assert_eq!(one_line("abcdef", 3), "abc…");
    }

    /// Hand-encoded protobuf: a ModelProto whose graph has a tensor input,
    /// a sequence input and an optional output.
    #[test]
    fn graph_io_reads_value_kinds() {
        fn ld(field: u64, body: &[u8]) -> Vec<u8> {
            let mut v = vec![(field << 3 | 2) as u8, body.len() as u8];
            v.extend_from_slice(body);
            v
        }
        fn vi(name: &str, ty: Vec<u8>) -> Vec<u8> {
            [ld(1, name.as_bytes()), ld(2, &ty)].concat()
        }
        let tensor_f32 = ld(1, &[0x08, 0x01]); // TypeProto.tensor_type { elem_type: 1 }
        let seq = ld(4, &ld(1, &ld(1, &[0x08, 0x01])));
        let opt = ld(9, &[]);
        let graph = [
            ld(1, b"node-bytes"),
            ld(2, b"g"),
            ld(11, &vi("x", tensor_f32)),
            ld(11, &vi("s", seq)),
            ld(12, &vi("y", opt)),
        ]
        .concat();
        // ir_version (varint field 1), then graph (field 7).
        let model = [vec![0x08, 0x08], ld(7, &graph)].concat();
        let io = graph_io(&model).unwrap();
        assert_eq!(io.inputs, vec![("x".to_string(), ValueKind::Tensor(1)), ("s".to_string(), ValueKind::Sequence)]);
        assert_eq!(io.outputs, vec![("y".to_string(), ValueKind::Optional)]);
        assert!(graph_io(&[0x3a, 0x7f]).is_none()); // truncated
    }
}
