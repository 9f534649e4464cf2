//! Loading ONNX files into the Tessera IR.
//!
//! Model files are untrusted: everything they declare (lengths, dims, counts,
//! paths) is checked before it is used to allocate or to index, and every
//! failure is one `Error::InvalidModel`/`Error::Unsupported` line that names
//! the tensor, node or value concerned.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use prost::bytes::Bytes;
use prost::Message;
use tessera_core::tensor::checked_numel;
use tessera_core::{limits, Attr, DType, Dim, Error, Graph, Node, Result, Tensor, ValueInfo};

use crate::proto::{self, type_proto, AttributeProto, AttributeType, NodeProto, TensorProto};
use crate::wire::{self, Msg};

/// A loaded model: the graph plus the model-level fields worth showing.
#[derive(Clone, Debug)]
pub struct Model {
    pub graph: Graph,
    pub ir_version: i64,
    /// `producer_name`, followed by `producer_version` when there is one.
    pub producer: String,
    pub doc: String,
    /// `metadata_props`, in file order.
    pub metadata: Vec<(String, String)>,
}

/// Decoding may use at most `DECODE_MEMORY_FACTOR` × file size +
/// [`DECODE_MEMORY_SLACK`] bytes of heap for the protobuf structs (weights in
/// `raw_data` are not counted: they stay in the memory map). Files that
/// would need more are made of a great many tiny messages and are rejected.
pub const DECODE_MEMORY_FACTOR: u64 = 32;
/// See [`DECODE_MEMORY_FACTOR`].
pub const DECODE_MEMORY_SLACK: u64 = 512 << 10;
/// Most nodes that inlining model-local functions may add to a graph.
pub const MAX_INLINED_NODES: u64 = 1 << 18;
/// Most bytes (encoded size plus generated names) of the nodes that inlining
/// model-local functions may add; checked before inlining from the function
/// bodies and again while inlining (attribute values passed down by
/// `ref_attr_name` are only known then).
pub const MAX_INLINED_BYTES: u64 = 256 << 20;
/// Longest name generated for an inlined node or value (`call/inner`);
/// longer ones are cut and made unique with a counter.
const MAX_GENERATED_NAME: usize = 240;
/// Deepest chain of model-local functions calling each other.
pub const MAX_FUNCTION_DEPTH: usize = 32;

/// Loads an ONNX model file. The file is memory-mapped and initializers in
/// `raw_data` (and external data files) stay windows into their maps.
/// External data is looked up relative to the model's folder.
pub fn load_model(path: &Path) -> Result<Model> {
    let in_file = |e: Error| prefix_error(e, &path.display().to_string());
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    let len = file.metadata().map_err(|e| io_error(path, e))?.len();
    if len == 0 {
        return Err(in_file(Error::InvalidModel("the file is empty".into())));
    }
    let map = map_file(&file).map_err(|e| io_error(path, e))?;
    let base = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    check_decode_budget(&map, Msg::Model).map_err(in_file)?;
    let data = Bytes::from_owner(MapOwner(map.clone()));
    let m = proto::ModelProto::decode(data).map_err(|e| in_file(decode_error("model", e)))?;
    Loader::new(Some(map), Some(base)).model(m).map_err(in_file)
}

/// Loads a model from bytes in memory (initializers are copied). External
/// data, if any, is looked up in `base_dir`; without one it is an error.
pub fn load_model_bytes(bytes: &[u8], base_dir: Option<&Path>) -> Result<Model> {
    check_decode_budget(bytes, Msg::Model)?;
    let m = proto::ModelProto::decode(bytes).map_err(|e| decode_error("model", e))?;
    Loader::new(None, base_dir).model(m)
}

/// Decodes one serialized `TensorProto` (the `input_0.pb`/`output_0.pb`
/// files of the ONNX test data). Returns its name and value.
pub fn load_tensor_proto(bytes: &[u8]) -> Result<(String, Tensor)> {
    check_decode_budget(bytes, Msg::Tensor)?;
    let t = TensorProto::decode(bytes).map_err(|e| decode_error("tensor", e))?;
    let what = if t.name.is_empty() { "tensor".to_string() } else { format!("tensor '{}'", short(&t.name)) };
    let tensor = Loader::new(None, None).tensor(&t, &what)?;
    Ok((t.name, tensor))
}

// ---------------------------------------------------------------------------
// Files and memory maps.

/// Lets a `Bytes` own (a handle to) the memory map it points into.
struct MapOwner(Arc<Mmap>);

impl AsRef<[u8]> for MapOwner {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

#[allow(unsafe_code)]
fn map_file(file: &File) -> std::io::Result<Arc<Mmap>> {
    // SAFETY: a memory map is only sound while no one else modifies or
    // truncates the file. We state that as an assumption of the loader:
    // model and external-data files are not changed while a model loaded
    // from them is alive. The map is read-only and every access to it goes
    // through bounds-checked slices.
    let map = unsafe { Mmap::map(file) }?;
    Ok(Arc::new(map))
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::Io(std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

fn decode_error(what: &str, e: prost::DecodeError) -> Error {
    Error::InvalidModel(format!("cannot decode the {what} protobuf: {e}"))
}

fn check_decode_budget(bytes: &[u8], root: Msg) -> Result<()> {
    let need = wire::estimate(bytes, root)?;
    let len = bytes.len() as u64;
    let limit = len.saturating_mul(DECODE_MEMORY_FACTOR).saturating_add(DECODE_MEMORY_SLACK);
    if need > limit {
        return Err(Error::InvalidModel(format!(
            "decoding this {len}-byte file would take about {need} bytes of memory (limit {limit}): \
             it holds too many tiny messages"
        )));
    }
    Ok(())
}

/// Offset of `s` inside `map`, when `s` points into it.
fn offset_in(map: &Mmap, s: &[u8]) -> Option<usize> {
    let off = (s.as_ptr() as usize).checked_sub(map.as_ptr() as usize)?;
    let end = off.checked_add(s.len())?;
    (end <= map.len()).then_some(off)
}

// ---------------------------------------------------------------------------
// Error helpers.

/// A name from the file, cut short so that one hostile name cannot make a
/// megabyte-long error line.
fn short(s: &str) -> String {
    const MAX: usize = 100;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Prefixes an error's message with `what` (keeping its kind).
fn prefix_error(e: Error, what: &str) -> Error {
    match e {
        Error::InvalidModel(m) => Error::InvalidModel(format!("{what}: {m}")),
        Error::Unsupported(m) => Error::Unsupported(format!("{what}: {m}")),
        Error::Shape(m) => Error::InvalidModel(format!("{what}: {m}")),
        e => e,
    }
}

fn invalid(msg: String) -> Error {
    Error::InvalidModel(msg)
}

/// "" for the default ONNX domain, whichever way the file spells it.
fn norm_domain(d: &str) -> String {
    if d == "ai.onnx" {
        String::new()
    } else {
        d.to_string()
    }
}

// ---------------------------------------------------------------------------
// Tensors, shapes and types.

fn dims_to_shape(dims: &[i64], what: &str) -> Result<Vec<usize>> {
    if dims.len() > limits::MAX_RANK {
        return Err(invalid(format!("{what} has rank {}, more than the limit of {}", dims.len(), limits::MAX_RANK)));
    }
    let mut shape = Vec::with_capacity(dims.len());
    for (axis, &d) in dims.iter().enumerate() {
        let u = u64::try_from(d).map_err(|_| invalid(format!("{what} has negative dimension {d} (axis {axis})")))?;
        if u > limits::MAX_DIM {
            return Err(invalid(format!(
                "{what} has dimension {d} (axis {axis}), more than the limit of {}",
                limits::MAX_DIM
            )));
        }
        let u = usize::try_from(u).map_err(|_| invalid(format!("{what}: dimension {d} does not fit in memory")))?;
        shape.push(u);
    }
    checked_numel(&shape)
        .map_err(|_| invalid(format!("{what} of shape {shape:?} has more than {} elements", limits::MAX_ELEMENTS)))?;
    Ok(shape)
}

fn dtype_of(code: i32, what: &str) -> Result<DType> {
    DType::from_onnx(code).map_err(|e| prefix_error(e, what))
}

/// The typed field that carries values of `dtype` when `raw_data` is not used.
fn typed_field(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "float_data",
        DType::F64 => "double_data",
        DType::I64 => "int64_data",
        DType::U32 | DType::U64 => "uint64_data",
        DType::I32 | DType::I16 | DType::U16 | DType::I8 | DType::U8 | DType::Bool | DType::F16 | DType::BF16 => {
            "int32_data"
        }
    }
}

/// Converts a typed field to a tensor. Narrow types stored in `int32_data`
/// (and u32 in `uint64_data`) are truncated, as numpy's casts do.
fn tensor_from_typed(t: &TensorProto, dtype: DType, shape: &[usize]) -> Result<Tensor> {
    fn narrow<S: Copy, T: tessera_core::dtype::Element>(
        shape: &[usize],
        v: &[S],
        f: impl Fn(S) -> T,
    ) -> Result<Tensor> {
        Tensor::from_vec(shape, v.iter().map(|&x| f(x)).collect())
    }
    match dtype {
        DType::F32 => Tensor::from_slice(shape, &t.float_data),
        DType::F64 => Tensor::from_slice(shape, &t.double_data),
        DType::I64 => Tensor::from_slice(shape, &t.int64_data),
        DType::U64 => Tensor::from_slice(shape, &t.uint64_data),
        DType::U32 => narrow(shape, &t.uint64_data, |x| x as u32),
        DType::I32 => Tensor::from_slice(shape, &t.int32_data),
        DType::I16 => narrow(shape, &t.int32_data, |x| x as i16),
        DType::U16 => narrow(shape, &t.int32_data, |x| x as u16),
        DType::I8 => narrow(shape, &t.int32_data, |x| x as i8),
        DType::U8 => narrow(shape, &t.int32_data, |x| x as u8),
        DType::Bool => narrow(shape, &t.int32_data, |x| u8::from(x != 0))?.with_dtype(DType::Bool),
        DType::F16 => narrow(shape, &t.int32_data, |x| half::f16::from_bits(x as u16)),
        DType::BF16 => narrow(shape, &t.int32_data, |x| half::bf16::from_bits(x as u16)),
    }
}

fn shape_from_proto(s: &proto::TensorShapeProto, what: &str) -> Result<Vec<Dim>> {
    use proto::tensor_shape_proto::dimension::Value;
    if s.dim.len() > limits::MAX_RANK {
        return Err(invalid(format!("{what} has rank {}, more than the limit of {}", s.dim.len(), limits::MAX_RANK)));
    }
    s.dim
        .iter()
        .enumerate()
        .map(|(axis, d)| match &d.value {
            Some(Value::DimValue(v)) => {
                let u = u64::try_from(*v)
                    .ok()
                    .filter(|&u| u <= limits::MAX_DIM)
                    .and_then(|u| usize::try_from(u).ok())
                    .ok_or_else(|| invalid(format!("{what} has invalid dimension {v} (axis {axis})")))?;
                Ok(Dim::Known(u))
            }
            Some(Value::DimParam(p)) if !p.is_empty() => Ok(Dim::Sym(p.clone())),
            _ => Ok(Dim::Unknown),
        })
        .collect()
}

/// Converts a `ValueInfoProto`; non-tensor types are `Unsupported`.
fn value_info(v: &proto::ValueInfoProto, role: &str) -> Result<ValueInfo> {
    if v.name.is_empty() {
        return Err(invalid(format!("a {role} has no name")));
    }
    let what = format!("{role} '{}'", short(&v.name));
    let mut vi = ValueInfo { name: v.name.clone(), dtype: None, shape: None };
    let Some(value) = v.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Ok(vi);
    };
    let kind = match value {
        type_proto::Value::TensorType(tt) => {
            if tt.elem_type != 0 {
                vi.dtype = Some(dtype_of(tt.elem_type, &what)?);
            }
            if let Some(s) = &tt.shape {
                vi.shape = Some(shape_from_proto(s, &what)?);
            }
            return Ok(vi);
        }
        type_proto::Value::SequenceType(_) => "a sequence",
        type_proto::Value::MapType(_) => "a map",
        type_proto::Value::OptionalType(_) => "an optional",
        type_proto::Value::SparseTensorType(_) => "a sparse tensor",
        type_proto::Value::OpaqueType(_) => "an opaque value",
    };
    Err(Error::Unsupported(format!("{what} is {kind}; only dense tensors are supported")))
}

// ---------------------------------------------------------------------------
// The loader proper.

/// Model-local functions, by (domain, name, overload).
#[derive(Default)]
struct Functions<'m> {
    list: Vec<&'m proto::FunctionProto>,
    index: HashMap<(String, &'m str, &'m str), usize>,
}

impl<'m> Functions<'m> {
    fn new(fs: &'m [proto::FunctionProto]) -> Result<Self> {
        let mut me = Functions::default();
        for f in fs {
            if f.name.is_empty() {
                return Err(invalid("a model-local function has no name".into()));
            }
            let key = (norm_domain(&f.domain), f.name.as_str(), f.overload.as_str());
            if me.index.insert(key, me.list.len()).is_some() {
                return Err(invalid(format!("model-local function '{}' is defined twice", short(&f.name))));
            }
            me.list.push(f);
        }
        Ok(me)
    }

    fn lookup(&self, n: &NodeProto) -> Option<usize> {
        if self.index.is_empty() {
            return None;
        }
        self.index.get(&(norm_domain(&n.domain), n.op_type.as_str(), n.overload.as_str())).copied()
    }

    /// Nodes and bytes that calling function `fi` adds once every nested
    /// call is inlined (saturating), computed without building anything.
    /// Fails on recursion and on chains deeper than [`MAX_FUNCTION_DEPTH`].
    fn expansion(
        &self,
        fi: usize,
        memo: &mut HashMap<usize, (u64, u64)>,
        stack: &mut Vec<usize>,
    ) -> Result<(u64, u64)> {
        if let Some(&c) = memo.get(&fi) {
            return Ok(c);
        }
        let f = self.list[fi];
        if stack.contains(&fi) {
            return Err(invalid(format!("model-local function '{}' calls itself", short(&f.name))));
        }
        if stack.len() >= MAX_FUNCTION_DEPTH {
            return Err(invalid(format!(
                "model-local function calls nest deeper than {MAX_FUNCTION_DEPTH} (at '{}')",
                short(&f.name)
            )));
        }
        stack.push(fi);
        let (mut nodes, mut bytes) = (0u64, 0u64);
        for b in &f.node {
            let (n, c) = match self.lookup(b) {
                Some(callee) => self.expansion(callee, memo, stack)?,
                None => (1, inlined_cost(b)),
            };
            nodes = nodes.saturating_add(n);
            bytes = bytes.saturating_add(c);
        }
        stack.pop();
        memo.insert(fi, (nodes, bytes));
        Ok((nodes, bytes))
    }
}

/// Bytes charged for one inlined node: its encoded size plus room for the
/// generated node and value names.
fn inlined_cost(n: &NodeProto) -> u64 {
    let names = 1 + n.input.len() + n.output.len();
    (n.encoded_len() as u64).saturating_add((names * MAX_GENERATED_NAME) as u64)
}

/// `call/inner`, cut to [`MAX_GENERATED_NAME`] bytes.
fn generated_name(call: &str, inner: &str) -> String {
    let mut s = format!("{call}/{inner}");
    if s.len() > MAX_GENERATED_NAME {
        let mut end = MAX_GENERATED_NAME;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Unique-name source for nodes and (during inlining) values.
#[derive(Default)]
struct Names {
    taken: HashSet<String>,
    /// Next suffix to try per base name, so that many clashes on one base
    /// stay linear overall.
    next: HashMap<String, usize>,
}

impl Names {
    fn unique(&mut self, base: String) -> String {
        if !self.taken.contains(&base) {
            self.taken.insert(base.clone());
            return base;
        }
        let k = self.next.entry(base.clone()).or_insert(1);
        loop {
            let c = format!("{base}_{k}");
            *k += 1;
            if !self.taken.contains(&c) {
                self.taken.insert(c.clone());
                return c;
            }
        }
    }
}

struct Loader<'p> {
    /// The model file's map: `raw_data` that points into it stays there.
    map: Option<Arc<Mmap>>,
    base_dir: Option<&'p Path>,
    canonical_base: Option<PathBuf>,
    /// External data files, mapped once each.
    external: HashMap<PathBuf, Arc<Mmap>>,
    node_names: Names,
    value_names: Names,
    used_functions: Vec<usize>,
    /// Running total of [`inlined_cost`] for the nodes inlined so far.
    inlined_bytes: u64,
}

impl<'p> Loader<'p> {
    fn new(map: Option<Arc<Mmap>>, base_dir: Option<&'p Path>) -> Self {
        Loader {
            map,
            base_dir,
            canonical_base: None,
            external: HashMap::new(),
            node_names: Names::default(),
            value_names: Names::default(),
            used_functions: Vec::new(),
            inlined_bytes: 0,
        }
    }

    /// Converts a decoded model. Takes it by value so that names and
    /// attribute lists move into the IR instead of being copied.
    fn model(&mut self, mut m: proto::ModelProto) -> Result<Model> {
        let g = m.graph.take().ok_or_else(|| invalid("the model has no graph".into()))?;
        let mut opsets = HashMap::new();
        for o in &m.opset_import {
            let d = norm_domain(&o.domain);
            if o.version < 1 {
                return Err(invalid(format!("opset import for domain '{}' has version {}", short(&d), o.version)));
            }
            if opsets.insert(d, o.version).is_some() {
                return Err(invalid(format!("domain '{}' is imported twice", short(&o.domain))));
            }
        }
        let funcs = Functions::new(&m.functions)?;
        let mut graph = self.graph(g, &funcs)?;
        graph.opsets = opsets;
        for &fi in &self.used_functions {
            for o in &funcs.list[fi].opset_import {
                graph.opsets.entry(norm_domain(&o.domain)).or_insert(o.version);
            }
        }
        graph.toposort()?;
        drop(funcs);
        let producer = match (m.producer_name.is_empty(), m.producer_version.is_empty()) {
            (_, true) => m.producer_name,
            (true, false) => m.producer_version,
            (false, false) => format!("{} {}", m.producer_name, m.producer_version),
        };
        Ok(Model {
            graph,
            ir_version: m.ir_version,
            producer,
            doc: m.doc_string,
            metadata: m.metadata_props.into_iter().map(|e| (e.key, e.value)).collect(),
        })
    }

    fn graph(&mut self, g: proto::GraphProto, funcs: &Functions<'_>) -> Result<Graph> {
        let mut graph = Graph { name: g.name, ..Default::default() };
        if let Some(s) = g.sparse_initializer.first() {
            let name = s.values.as_ref().map(|v| short(&v.name)).unwrap_or_default();
            return Err(Error::Unsupported(format!("sparse initializer '{name}'")));
        }
        for t in &g.initializer {
            if t.name.is_empty() {
                return Err(invalid("an initializer has no name".into()));
            }
            let tensor = self.tensor(t, &format!("initializer '{}'", short(&t.name)))?;
            if graph.initializers.insert(t.name.clone(), tensor).is_some() {
                return Err(invalid(format!("initializer '{}' is defined twice", short(&t.name))));
            }
        }
        for v in &g.input {
            // An initializer listed as an input is a constant here.
            if graph.initializers.contains_key(&v.name) {
                continue;
            }
            let vi = value_info(v, "graph input")?;
            if graph.is_input(&vi.name) {
                return Err(invalid(format!("graph input '{}' is listed twice", short(&vi.name))));
            }
            graph.inputs.push(vi);
        }
        for v in &g.output {
            graph.outputs.push(value_info(v, "graph output")?);
        }
        for v in &g.value_info {
            match value_info(v, "value_info") {
                Ok(vi) => {
                    graph.value_info.insert(vi.name.clone(), vi);
                }
                // Non-tensor intermediates are only hints; the ops that make
                // them are reported by the providers.
                Err(Error::Unsupported(m)) => tracing::debug!("ignoring {m}"),
                Err(e) => return Err(e),
            }
        }

        // Node names: keep the file's, invent unique ones for the others.
        let calls = g.node.iter().any(|n| funcs.lookup(n).is_some());
        if calls || g.node.iter().any(|n| n.name.is_empty()) {
            self.node_names.taken = g.node.iter().filter(|n| !n.name.is_empty()).map(|n| n.name.clone()).collect();
        }
        if calls {
            let mut memo = HashMap::new();
            let (mut nodes, mut bytes) = (0u64, 0u64);
            for fi in g.node.iter().filter_map(|n| funcs.lookup(n)) {
                let (n, b) = funcs.expansion(fi, &mut memo, &mut Vec::new())?;
                nodes = nodes.saturating_add(n);
                bytes = bytes.saturating_add(b);
            }
            if nodes > MAX_INLINED_NODES {
                return Err(invalid(format!(
                    "inlining the model-local functions would make {nodes} nodes (limit {MAX_INLINED_NODES})"
                )));
            }
            if bytes > MAX_INLINED_BYTES {
                return Err(invalid(format!(
                    "inlining the model-local functions would make {bytes} bytes of nodes (limit {MAX_INLINED_BYTES})"
                )));
            }
            let taken = &mut self.value_names.taken;
            taken.extend(g.input.iter().map(|v| v.name.clone()));
            taken.extend(g.initializer.iter().map(|t| t.name.clone()));
            for n in &g.node {
                taken.extend(n.input.iter().chain(&n.output).cloned());
            }
        }
        let mut out = Vec::with_capacity(g.node.len());
        for (i, mut n) in g.node.into_iter().enumerate() {
            let name = if n.name.is_empty() {
                self.node_names.unique(format!("{}_{i}", short(&n.op_type)))
            } else {
                std::mem::take(&mut n.name)
            };
            self.emit(n, name, funcs, 0, &mut out)?;
        }
        graph.nodes = out;
        Ok(graph)
    }

    /// Converts a node, inlining it when it calls a model-local function.
    fn emit(
        &mut self,
        n: NodeProto,
        name: String,
        funcs: &Functions<'_>,
        depth: usize,
        out: &mut Vec<Node>,
    ) -> Result<()> {
        match funcs.lookup(&n) {
            None => {
                let node = self.node(n, name)?;
                out.push(node);
                Ok(())
            }
            Some(fi) => self.inline(&n, &name, funcs, fi, depth, out),
        }
    }

    fn inline(
        &mut self,
        call: &NodeProto,
        call_name: &str,
        funcs: &Functions<'_>,
        fi: usize,
        depth: usize,
        out: &mut Vec<Node>,
    ) -> Result<()> {
        let f = funcs.list[fi];
        if !self.used_functions.contains(&fi) {
            self.used_functions.push(fi);
        }
        if depth >= MAX_FUNCTION_DEPTH {
            return Err(invalid(format!("node '{}': function calls nest too deeply", short(call_name))));
        }
        let what = format!("node '{}' (call of function '{}')", short(call_name), short(&f.name));
        if call.input.len() > f.input.len() || call.output.len() > f.output.len() {
            return Err(invalid(format!(
                "{what} has {} inputs and {} outputs; the function takes {} and {}",
                call.input.len(),
                call.output.len(),
                f.input.len(),
                f.output.len()
            )));
        }
        // Formal parameter -> actual value; anything else gets a fresh name.
        let mut rename: HashMap<&str, String> = HashMap::new();
        for (i, formal) in f.input.iter().enumerate() {
            rename.insert(formal, call.input.get(i).cloned().unwrap_or_default());
        }
        for (formal, actual) in f.output.iter().zip(&call.output) {
            if !actual.is_empty() {
                rename.insert(formal, actual.clone());
            }
        }
        // Attribute values: the call's, then the function's defaults.
        let mut attrs: HashMap<&str, &AttributeProto> = HashMap::new();
        for a in &f.attribute_proto {
            attrs.insert(&a.name, a);
        }
        for a in &call.attribute {
            if !a.ref_attr_name.is_empty() {
                return Err(invalid(format!(
                    "{what}: attribute '{}' refers to '{}' outside a function",
                    short(&a.name),
                    short(&a.ref_attr_name)
                )));
            }
            attrs.insert(&a.name, a);
        }
        for (k, body) in f.node.iter().enumerate() {
            let mut n = NodeProto {
                name: String::new(),
                op_type: body.op_type.clone(),
                domain: body.domain.clone(),
                overload: body.overload.clone(),
                ..Default::default()
            };
            for v in body.input.iter().chain(&body.output) {
                if !v.is_empty() && !rename.contains_key(v.as_str()) {
                    let fresh = self.value_names.unique(generated_name(call_name, v));
                    rename.insert(v, fresh);
                }
            }
            let map = |v: &String| {
                if v.is_empty() {
                    String::new()
                } else {
                    rename.get(v.as_str()).cloned().unwrap_or_default()
                }
            };
            n.input = body.input.iter().map(map).collect();
            n.output = body.output.iter().map(map).collect();
            for a in &body.attribute {
                if a.ref_attr_name.is_empty() {
                    n.attribute.push(a.clone());
                } else if let Some(v) = attrs.get(a.ref_attr_name.as_str()) {
                    let mut v = (*v).clone();
                    v.name = a.name.clone();
                    v.ref_attr_name.clear();
                    n.attribute.push(v);
                }
            }
            let inner = if body.name.is_empty() { format!("{}_{k}", short(&body.op_type)) } else { body.name.clone() };
            self.inlined_bytes = self.inlined_bytes.saturating_add(inlined_cost(&n));
            if self.inlined_bytes > MAX_INLINED_BYTES {
                return Err(invalid(format!(
                    "{what}: inlining the model-local functions makes more than {MAX_INLINED_BYTES} bytes of nodes"
                )));
            }
            let name = self.node_names.unique(generated_name(call_name, &inner));
            self.emit(n, name, funcs, depth + 1, out)?;
        }
        Ok(())
    }

    fn node(&mut self, n: NodeProto, name: String) -> Result<Node> {
        if n.op_type.is_empty() {
            return Err(invalid(format!("node '{}' has no op_type", short(&name))));
        }
        let mut attrs = BTreeMap::new();
        for a in n.attribute {
            let what = format!("attribute '{}' of node '{}' ({})", short(&a.name), short(&name), short(&n.op_type));
            if a.name.is_empty() {
                return Err(invalid(format!("{what} has no name")));
            }
            if !a.ref_attr_name.is_empty() {
                return Err(invalid(format!(
                    "{what} refers to '{}', which is only allowed inside a function",
                    short(&a.ref_attr_name)
                )));
            }
            let name = a.name.clone();
            let v = self.attr(a, &what)?;
            if attrs.insert(name, v).is_some() {
                return Err(invalid(format!("{what} is given twice")));
            }
        }
        Ok(Node { name, domain: norm_domain(&n.domain), op_type: n.op_type, inputs: n.input, outputs: n.output, attrs })
    }

    fn attr(&mut self, a: AttributeProto, what: &str) -> Result<Attr> {
        use AttributeType as T;
        // Which value fields the file filled in.
        let fields: [(T, bool); 14] = [
            (T::Float, a.f.is_some()),
            (T::Int, a.i.is_some()),
            (T::String, a.s.is_some()),
            (T::Tensor, a.t.is_some()),
            (T::Graph, a.g.is_some()),
            (T::SparseTensor, a.sparse_tensor.is_some()),
            (T::TypeProto, a.tp.is_some()),
            (T::Floats, !a.floats.is_empty()),
            (T::Ints, !a.ints.is_empty()),
            (T::Strings, !a.strings.is_empty()),
            (T::Tensors, !a.tensors.is_empty()),
            (T::Graphs, !a.graphs.is_empty()),
            (T::SparseTensors, !a.sparse_tensors.is_empty()),
            (T::TypeProtos, !a.type_protos.is_empty()),
        ];
        let ty = if a.r#type == 0 {
            // Old files leave the type out: use the one field that is set.
            fields
                .iter()
                .find(|f| f.1)
                .map(|f| f.0)
                .ok_or_else(|| invalid(format!("{what} has neither a type nor a value")))?
        } else {
            T::try_from(a.r#type).map_err(|_| invalid(format!("{what} has unknown attribute type {}", a.r#type)))?
        };
        if let Some(other) = fields.iter().find(|f| f.1 && f.0 != ty) {
            return Err(invalid(format!(
                "{what} is declared {} but carries a {} value",
                ty.as_str_name(),
                other.0.as_str_name()
            )));
        }
        Ok(match ty {
            T::Float => Attr::Float(a.f.unwrap_or(0.0)),
            T::Int => Attr::Int(a.i.unwrap_or(0)),
            T::String => Attr::String(a.s.unwrap_or_default()),
            T::Floats => Attr::Floats(a.floats),
            T::Ints => Attr::Ints(a.ints),
            T::Strings => Attr::Strings(a.strings),
            T::Tensor => match &a.t {
                Some(t) => Attr::Tensor(self.tensor(t, what)?),
                None => return Err(invalid(format!("{what} is declared TENSOR but has no tensor"))),
            },
            // Subgraphs are kept as markers: control flow is reported as
            // unsupported by the providers.
            T::Graph | T::Graphs => Attr::Graph,
            T::Tensors => return Err(Error::Unsupported(format!("{what} is a list of tensors"))),
            T::SparseTensor | T::SparseTensors => return Err(Error::Unsupported(format!("{what} is a sparse tensor"))),
            T::TypeProto | T::TypeProtos => return Err(Error::Unsupported(format!("{what} is a type"))),
            T::Undefined => return Err(invalid(format!("{what} has an undefined type"))),
        })
    }

    /// Converts a `TensorProto`; `what` names it in errors.
    fn tensor(&mut self, t: &TensorProto, what: &str) -> Result<Tensor> {
        if t.data_type == 8 {
            return Err(Error::Unsupported(format!("{what} is a string tensor")));
        }
        let dtype = dtype_of(t.data_type, what)?;
        let shape = dims_to_shape(&t.dims, what)?;
        let numel = checked_numel(&shape).map_err(|e| prefix_error(e, what))?;
        let nbytes = numel
            .checked_mul(dtype.size())
            .ok_or_else(|| invalid(format!("{what} of shape {shape:?} is too large")))?;
        if t.segment.is_some() {
            return Err(Error::Unsupported(format!("{what} is a segment of a larger tensor")));
        }
        match t.data_location {
            0 => {}
            1 => return self.external_tensor(t, dtype, &shape, nbytes, what),
            d => return Err(invalid(format!("{what} has unknown data_location {d}"))),
        }
        let sources = [
            ("raw_data", !t.raw_data.is_empty()),
            ("float_data", !t.float_data.is_empty()),
            ("int32_data", !t.int32_data.is_empty()),
            ("int64_data", !t.int64_data.is_empty()),
            ("double_data", !t.double_data.is_empty()),
            ("uint64_data", !t.uint64_data.is_empty()),
            ("string_data", !t.string_data.is_empty()),
        ];
        let mut present = sources.iter().filter(|s| s.1).map(|s| s.0);
        let first = present.next();
        if let (Some(a), Some(b)) = (first, present.next()) {
            return Err(invalid(format!("{what} carries data in both {a} and {b}")));
        }
        let Some(field) = first else {
            if numel == 0 {
                return Tensor::zeros(dtype, &shape).map_err(|e| prefix_error(e, what));
            }
            return Err(invalid(format!("{what} of shape {shape:?} has no data ({numel} elements expected)")));
        };
        if field == "raw_data" {
            let raw = &t.raw_data;
            if raw.len() != nbytes {
                return Err(invalid(format!(
                    "{what}: raw_data has {} bytes, but shape {shape:?} of {dtype} needs {nbytes}",
                    raw.len()
                )));
            }
            if let Some(map) = &self.map {
                if let Some(off) = offset_in(map, raw) {
                    return Tensor::from_mmap(dtype, &shape, map.clone(), off, nbytes)
                        .map_err(|e| prefix_error(e, what));
                }
            }
            return Tensor::from_bytes(dtype, &shape, raw).map_err(|e| prefix_error(e, what));
        }
        let expected = typed_field(dtype);
        if field != expected {
            return Err(invalid(format!(
                "{what} is {dtype} but its data is in {field} (expected {expected} or raw_data)"
            )));
        }
        let count = match field {
            "float_data" => t.float_data.len(),
            "int32_data" => t.int32_data.len(),
            "int64_data" => t.int64_data.len(),
            "double_data" => t.double_data.len(),
            _ => t.uint64_data.len(),
        };
        if count != numel {
            return Err(invalid(format!("{what}: {field} has {count} values, but shape {shape:?} needs {numel}")));
        }
        tensor_from_typed(t, dtype, &shape).map_err(|e| prefix_error(e, what))
    }

    fn external_tensor(
        &mut self,
        t: &TensorProto,
        dtype: DType,
        shape: &[usize],
        nbytes: usize,
        what: &str,
    ) -> Result<Tensor> {
        let mut location: Option<&str> = None;
        let mut offset: u64 = 0;
        let mut length: Option<u64> = None;
        let number = |key: &str, v: &str| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| invalid(format!("{what}: external data {key} '{}' is not a number", short(v))))
        };
        for e in &t.external_data {
            match e.key.as_str() {
                "location" => location = Some(&e.value),
                "offset" => offset = number("offset", &e.value)?,
                "length" => length = Some(number("length", &e.value)?),
                _ => {}
            }
        }
        let location = location.ok_or_else(|| invalid(format!("{what} is stored externally but has no location")))?;
        let len = length.unwrap_or(nbytes as u64);
        if len != nbytes as u64 {
            return Err(invalid(format!(
                "{what}: external data length is {len} bytes, but shape {shape:?} of {dtype} needs {nbytes}"
            )));
        }
        let path = self.resolve_external(location, what)?;
        let file = File::open(&path)
            .map_err(|e| invalid(format!("{what}: cannot open external data '{}': {e}", short(location))))?;
        let size = file
            .metadata()
            .map_err(|e| invalid(format!("{what}: cannot read external data '{}': {e}", short(location))))?
            .len();
        let end = offset.checked_add(len).filter(|&end| end <= size).ok_or_else(|| {
            invalid(format!(
                "{what}: external data range {offset}..{} lies outside '{}' ({size} bytes)",
                offset.saturating_add(len),
                short(location)
            ))
        })?;
        if len == 0 {
            return Tensor::zeros(dtype, shape).map_err(|e| prefix_error(e, what));
        }
        let map = match self.external.get(&path) {
            Some(m) => m.clone(),
            None => {
                let m = map_file(&file)
                    .map_err(|e| invalid(format!("{what}: cannot map external data '{}': {e}", short(location))))?;
                self.external.insert(path.clone(), m.clone());
                m
            }
        };
        let (off, _) = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(end).ok())
            .ok_or_else(|| invalid(format!("{what}: external data offset {offset} does not fit in memory")))?;
        Tensor::from_mmap(dtype, shape, map, off, nbytes).map_err(|e| prefix_error(e, what))
    }

    /// Resolves an external-data location inside the model's folder:
    /// relative paths only, no `..`, and no symlink leading out of it.
    fn resolve_external(&mut self, location: &str, what: &str) -> Result<PathBuf> {
        let bad = |why: &str| invalid(format!("{what}: external data location '{}' {why}", short(location)));
        if location.is_empty() {
            return Err(bad("is empty"));
        }
        let rel = Path::new(location);
        for c in rel.components() {
            match c {
                Component::Normal(_) | Component::CurDir => {}
                Component::ParentDir => return Err(bad("leaves the model folder ('..')")),
                Component::RootDir | Component::Prefix(_) => return Err(bad("is an absolute path")),
            }
        }
        let base = self.base_dir.ok_or_else(|| {
            invalid(format!(
                "{what} is stored in external file '{}', but the model was loaded from memory without a folder",
                short(location)
            ))
        })?;
        let canonical_base = match &self.canonical_base {
            Some(b) => b.clone(),
            None => {
                let b = base
                    .canonicalize()
                    .map_err(|e| invalid(format!("{what}: cannot resolve the model folder: {e}")))?;
                self.canonical_base = Some(b.clone());
                b
            }
        };
        let full = base.join(rel).canonicalize().map_err(|e| bad(&format!("cannot be opened: {e}")))?;
        if !full.starts_with(&canonical_base) {
            return Err(bad("resolves outside the model folder (symlink?)"));
        }
        if !full.is_file() {
            return Err(bad("is not a regular file"));
        }
        Ok(full)
    }
}
