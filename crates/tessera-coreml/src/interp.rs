//! Runs an ML Program package on the CPU, with MIL's semantics (not
//! ONNX's): `linear` weights are `[out, in]`, `conv` pads are `[begin, end]`
//! per spatial dim, fp16 values are rounded to fp16 after every operation.
//! It reads the package from its serialized form (protobuf and
//! `weight.bin`), computes every output shape itself and checks it against
//! the type the package declares, so a wrong layout, transpose or shape in a
//! conversion fails here. Covers the operations [`crate::convert`] emits.

use std::collections::{HashMap, HashSet};

use half::f16;
use tessera_core::{Error, Result};
use tessera_kernels::conv::{conv_forward, ConvGeom};
use tessera_kernels::gemm::{sgemm, MatRef, Parallel};

use crate::blob::{BlobDType, BlobReader};
use crate::mil::broadcast_shapes;
use crate::package::Package;
use crate::quantize::unpack_bits;
use crate::spec::{self, binding, tensor_value, value, value_type, DataType};

/// A tensor value.
#[derive(Clone, Debug, PartialEq)]
pub struct Arr {
    pub dtype: DataType,
    pub shape: Vec<usize>,
    pub data: Data,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    /// fp32 and fp16 (fp16 values are kept rounded).
    F(Vec<f32>),
    I(Vec<i32>),
    B(Vec<bool>),
    U8(Vec<u8>),
    I8(Vec<i8>),
    U32(Vec<u32>),
    S(String),
}

fn err(msg: impl Into<String>) -> Error {
    Error::InvalidModel(msg.into())
}

fn round_f16(v: &mut [f32]) {
    for x in v {
        *x = f16::from_f32(*x).to_f32();
    }
}

impl Arr {
    /// An interface value from a tensor: floats as fp32, integers as int32.
    pub fn from_tensor(t: &tessera_core::Tensor) -> Arr {
        let shape = t.shape().to_vec();
        let v = t.to_f64_vec();
        if t.dtype().is_float() {
            Arr { dtype: DataType::Float32, shape, data: Data::F(v.into_iter().map(|x| x as f32).collect()) }
        } else {
            Arr { dtype: DataType::Int32, shape, data: Data::I(v.into_iter().map(|x| x as i32).collect()) }
        }
    }

    pub fn f(dtype: DataType, shape: Vec<usize>, mut v: Vec<f32>) -> Arr {
        if dtype == DataType::Float16 {
            round_f16(&mut v);
        }
        Arr { dtype, shape, data: Data::F(v) }
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn floats(&self) -> Result<Vec<f32>> {
        Ok(match &self.data {
            Data::F(v) => v.clone(),
            Data::I(v) => v.iter().map(|&x| x as f32).collect(),
            Data::B(v) => v.iter().map(|&x| x as i32 as f32).collect(),
            Data::U8(v) => v.iter().map(|&x| x as f32).collect(),
            Data::I8(v) => v.iter().map(|&x| x as f32).collect(),
            Data::U32(v) => v.iter().map(|&x| x as f32).collect(),
            Data::S(_) => return Err(err("a string used as a number")),
        })
    }
    fn fref(&self) -> Result<&[f32]> {
        match &self.data {
            Data::F(v) => Ok(v),
            _ => Err(err(format!("expected a float tensor, got {:?}", self.dtype))),
        }
    }
    pub fn ints(&self) -> Result<Vec<i64>> {
        Ok(match &self.data {
            Data::I(v) => v.iter().map(|&x| x as i64).collect(),
            Data::U32(v) => v.iter().map(|&x| x as i64).collect(),
            Data::U8(v) => v.iter().map(|&x| x as i64).collect(),
            Data::I8(v) => v.iter().map(|&x| x as i64).collect(),
            Data::B(v) => v.iter().map(|&x| x as i64).collect(),
            Data::F(v) => v.iter().map(|&x| x as i64).collect(),
            Data::S(_) => return Err(err("a string used as a number")),
        })
    }
    fn bools(&self) -> Result<Vec<bool>> {
        Ok(match &self.data {
            Data::B(v) => v.clone(),
            _ => self.floats()?.iter().map(|&x| x != 0.0).collect(),
        })
    }
    fn string(&self) -> Result<&str> {
        match &self.data {
            Data::S(s) => Ok(s),
            _ => Err(err("expected a string")),
        }
    }
    fn scalar_f(&self) -> Result<f32> {
        self.floats()?.first().copied().ok_or_else(|| err("empty scalar"))
    }
    fn scalar_i(&self) -> Result<i64> {
        self.ints()?.first().copied().ok_or_else(|| err("empty scalar"))
    }
}

fn tensor_type(t: &spec::ValueType) -> Result<(DataType, Vec<usize>)> {
    match &t.r#type {
        Some(value_type::Type::TensorType(tt)) => {
            let dt =
                DataType::try_from(tt.data_type).map_err(|_| err(format!("unknown MIL data type {}", tt.data_type)))?;
            let mut shape = Vec::with_capacity(tt.dimensions.len());
            for d in &tt.dimensions {
                match &d.dimension {
                    Some(spec::dimension::Dimension::Constant(c)) => {
                        shape.push(usize::try_from(c.size).map_err(|_| err("dimension overflows"))?)
                    }
                    _ => return Err(err("the interpreter runs static shapes only")),
                }
            }
            if tt.rank as usize != shape.len() {
                return Err(err(format!("rank {} with {} dimensions", tt.rank, shape.len())));
            }
            Ok((dt, shape))
        }
        _ => Err(err("only tensor values are interpreted")),
    }
}

/// Largest tensor (elements) a package may declare here.
const MAX_ELEMENTS: usize = 1 << 31;

fn checked_numel(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
        .ok_or_else(|| err(format!("shape {shape:?} is too large")))
}

fn const_value(v: &spec::Value, blobs: Option<&BlobReader>) -> Result<Arr> {
    let (dtype, shape) = tensor_type(v.r#type.as_ref().ok_or_else(|| err("value without a type"))?)?;
    let n = checked_numel(&shape)?;
    let data = match &v.value {
        Some(value::Value::ImmediateValue(iv)) => {
            let t = iv.tensor.as_ref().and_then(|t| t.values.as_ref()).ok_or_else(|| err("empty immediate value"))?;
            match (t, dtype) {
                (tensor_value::Values::Floats(f), _) => Data::F(f.values.clone()),
                (tensor_value::Values::Ints(i), _) => Data::I(i.values.clone()),
                (tensor_value::Values::Bools(b), _) => Data::B(b.values.clone()),
                (tensor_value::Values::Strings(s), _) => Data::S(s.values.first().cloned().unwrap_or_default()),
                (tensor_value::Values::LongInts(l), _) => Data::I(l.values.iter().map(|&x| x as i32).collect()),
                (tensor_value::Values::Doubles(d), _) => Data::F(d.values.iter().map(|&x| x as f32).collect()),
                (tensor_value::Values::Bytes(b), DataType::Float16) => {
                    Data::F(b.values.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect())
                }
                (tensor_value::Values::Bytes(b), DataType::Uint8) => Data::U8(b.values.clone()),
                (tensor_value::Values::Bytes(b), DataType::Int8) => {
                    Data::I8(b.values.iter().map(|&x| x as i8).collect())
                }
                (tensor_value::Values::Bytes(b), DataType::Uint32) => {
                    Data::U32(b.values.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
                }
                (tensor_value::Values::Bytes(_), dt) => return Err(err(format!("byte immediate of type {dt:?}"))),
            }
        }
        Some(value::Value::BlobFileValue(bf)) => {
            if bf.file_name != "@model_path/weights/weight.bin" {
                return Err(err(format!("blob file '{}' is not the package's weights/weight.bin", bf.file_name)));
            }
            let r = blobs.ok_or_else(|| err("the package has no weights/weight.bin"))?;
            let (bt, bytes, _pad) = r.blob(bf.offset)?;
            let want = match bt {
                BlobDType::F16 | BlobDType::I16 | BlobDType::U16 => 2 * n,
                BlobDType::F32 | BlobDType::I32 | BlobDType::U32 => 4 * n,
                BlobDType::U8 | BlobDType::I8 => n,
                BlobDType::UBits(b) => (n * b as usize).div_ceil(8),
            };
            if bytes.len() != want {
                return Err(err(format!(
                    "blob at {} holds {} bytes, its type {shape:?} {dtype:?} needs {want}",
                    bf.offset,
                    bytes.len()
                )));
            }
            match (bt, dtype) {
                (BlobDType::F16, DataType::Float16) => {
                    Data::F(bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect())
                }
                (BlobDType::F32, DataType::Float32) => {
                    Data::F(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
                }
                (BlobDType::I32, DataType::Int32) => {
                    Data::I(bytes.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
                }
                (BlobDType::U32, DataType::Uint32) => {
                    Data::U32(bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
                }
                (BlobDType::I8, DataType::Int8) => Data::I8(bytes.iter().map(|&x| x as i8).collect()),
                (BlobDType::U8, DataType::Uint8) => Data::U8(bytes.to_vec()),
                (BlobDType::UBits(b), d) if crate::mil::index_dtype(b).ok() == Some(d) => {
                    Data::U8(unpack_bits(bytes, b, n)?)
                }
                (b, d) => return Err(err(format!("blob of type {b:?} for a {d:?} value"))),
            }
        }
        None => return Err(err("const without a value")),
    };
    let len = match &data {
        Data::F(v) => v.len(),
        Data::I(v) => v.len(),
        Data::B(v) => v.len(),
        Data::U8(v) => v.len(),
        Data::I8(v) => v.len(),
        Data::U32(v) => v.len(),
        Data::S(_) => 1,
    };
    if len != n {
        return Err(err(format!("constant of shape {shape:?} holds {len} values")));
    }
    Ok(Arr { dtype, shape, data })
}

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    broadcast_shapes(a, b).ok_or_else(|| err(format!("shapes {a:?} and {b:?} do not broadcast")))
}

/// For each output element, the index into an input of `shape` broadcast to `out`.
fn broadcast_index(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let n: usize = out.iter().product();
    if shape == out {
        return (0..n).collect();
    }
    let r = out.len();
    let st = strides(shape);
    let mut bst = vec![0usize; r];
    for i in 0..shape.len() {
        let o = i + r - shape.len();
        bst[o] = if shape[i] == 1 { 0 } else { st[i] };
    }
    let ost = strides(out);
    (0..n)
        .map(|flat| {
            let mut rem = flat;
            let mut idx = 0;
            for d in 0..r {
                let c = rem / ost[d];
                rem %= ost[d];
                idx += c * bst[d];
            }
            idx
        })
        .collect()
}

fn binary_f(a: &Arr, b: &Arr, dtype: DataType, f: impl Fn(f32, f32) -> f32) -> Result<Arr> {
    let out = broadcast_shape(&a.shape, &b.shape)?;
    let (av, bv) = (a.floats()?, b.floats()?);
    let v: Vec<f32> = if a.shape == b.shape {
        av.iter().zip(&bv).map(|(&x, &y)| f(x, y)).collect()
    } else if b.numel() == 1 && a.shape == out {
        av.iter().map(|&x| f(x, bv[0])).collect()
    } else {
        let (ia, ib) = (broadcast_index(&a.shape, &out), broadcast_index(&b.shape, &out));
        ia.iter().zip(&ib).map(|(&i, &j)| f(av[i], bv[j])).collect()
    };
    Ok(match dtype {
        DataType::Int32 => Arr { dtype, shape: out, data: Data::I(v.iter().map(|&x| x as i32).collect()) },
        _ => Arr::f(dtype, out, v),
    })
}

fn binary_i(a: &Arr, b: &Arr, f: impl Fn(i64, i64) -> i64) -> Result<Arr> {
    let out = broadcast_shape(&a.shape, &b.shape)?;
    let (av, bv) = (a.ints()?, b.ints()?);
    let (ia, ib) = (broadcast_index(&a.shape, &out), broadcast_index(&b.shape, &out));
    let v = ia.iter().zip(&ib).map(|(&i, &j)| f(av[i], bv[j]) as i32).collect();
    Ok(Arr { dtype: DataType::Int32, shape: out, data: Data::I(v) })
}

fn compare(a: &Arr, b: &Arr, f: impl Fn(f64, f64) -> bool) -> Result<Arr> {
    let out = broadcast_shape(&a.shape, &b.shape)?;
    let av: Vec<f64> = a
        .ints()
        .ok()
        .filter(|_| a.dtype == DataType::Int32)
        .map(|v| v.iter().map(|&x| x as f64).collect())
        .unwrap_or(a.floats()?.iter().map(|&x| x as f64).collect());
    let bv: Vec<f64> = b
        .ints()
        .ok()
        .filter(|_| b.dtype == DataType::Int32)
        .map(|v| v.iter().map(|&x| x as f64).collect())
        .unwrap_or(b.floats()?.iter().map(|&x| x as f64).collect());
    let (ia, ib) = (broadcast_index(&a.shape, &out), broadcast_index(&b.shape, &out));
    let v = ia.iter().zip(&ib).map(|(&i, &j)| f(av[i], bv[j])).collect();
    Ok(Arr { dtype: DataType::Bool, shape: out, data: Data::B(v) })
}

fn unary(x: &Arr, f: impl Fn(f32) -> f32) -> Result<Arr> {
    Ok(Arr::f(x.dtype, x.shape.clone(), x.fref()?.iter().map(|&v| f(v)).collect()))
}

fn norm_axis(a: i64, r: usize) -> Result<usize> {
    let v = if a < 0 { a + r as i64 } else { a };
    if v < 0 || v >= r.max(1) as i64 {
        return Err(err(format!("axis {a} out of range for rank {r}")));
    }
    Ok(v as usize)
}

/// Gathers `x` re-laid out by `perm` (a transpose).
pub(crate) fn transpose(x: &Arr, perm: &[usize]) -> Result<Arr> {
    let r = x.shape.len();
    if perm.len() != r || {
        let mut p = perm.to_vec();
        p.sort();
        p != (0..r).collect::<Vec<_>>()
    } {
        return Err(err(format!("perm {perm:?} for rank {r}")));
    }
    let out: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let ist = strides(&x.shape);
    let ost = strides(&out);
    let n = x.numel();
    let src: Vec<usize> = (0..n)
        .map(|flat| {
            let mut rem = flat;
            let mut idx = 0;
            for d in 0..r {
                let c = rem / ost[d];
                rem %= ost[d];
                idx += c * ist[perm[d]];
            }
            idx
        })
        .collect();
    Ok(Arr { dtype: x.dtype, shape: out, data: pick(&x.data, &src) })
}

fn pick(d: &Data, idx: &[usize]) -> Data {
    match d {
        Data::F(v) => Data::F(idx.iter().map(|&i| v[i]).collect()),
        Data::I(v) => Data::I(idx.iter().map(|&i| v[i]).collect()),
        Data::B(v) => Data::B(idx.iter().map(|&i| v[i]).collect()),
        Data::U8(v) => Data::U8(idx.iter().map(|&i| v[i]).collect()),
        Data::I8(v) => Data::I8(idx.iter().map(|&i| v[i]).collect()),
        Data::U32(v) => Data::U32(idx.iter().map(|&i| v[i]).collect()),
        Data::S(s) => Data::S(s.clone()),
    }
}

fn concat_data(parts: &[&Data]) -> Result<Data> {
    fn join<T: Clone>(parts: &[&Data], get: impl Fn(&Data) -> Option<&Vec<T>>) -> Result<Vec<T>> {
        let slices = parts.iter().map(|d| get(d).map(Vec::as_slice).ok_or_else(|| err("mixed types")));
        Ok(slices.collect::<Result<Vec<_>>>()?.concat())
    }
    Ok(match parts.first() {
        Some(Data::F(_)) => Data::F(join(parts, |d| if let Data::F(v) = d { Some(v) } else { None })?),
        Some(Data::I(_)) => Data::I(join(parts, |d| if let Data::I(v) = d { Some(v) } else { None })?),
        Some(Data::B(_)) => Data::B(join(parts, |d| if let Data::B(v) = d { Some(v) } else { None })?),
        _ => return Err(err("concat of unsupported type")),
    })
}

/// Reduction over `axes` with `f` folding a lane into one value.
fn reduce(x: &Arr, axes: &[usize], keep: bool, f: impl Fn(&[f32]) -> f32) -> Result<Arr> {
    let r = x.shape.len();
    let xv = x.floats()?;
    let mut out_shape_keep = x.shape.clone();
    for &a in axes {
        out_shape_keep[a] = 1;
    }
    // Move reduced axes last, then fold contiguous lanes.
    let kept: Vec<usize> = (0..r).filter(|a| !axes.contains(a)).collect();
    let mut perm = kept.clone();
    perm.extend(axes);
    let t = transpose(&Arr::f(DataType::Float32, x.shape.clone(), xv), &perm)?;
    let lane: usize = axes.iter().map(|&a| x.shape[a]).product();
    let tv = t.fref()?;
    let v: Vec<f32> = if lane == 0 { vec![f(&[]); tv.len()] } else { tv.chunks(lane).map(&f).collect() };
    let shape = if keep { out_shape_keep } else { kept.iter().map(|&a| x.shape[a]).collect() };
    Ok(Arr::f(x.dtype, shape, v))
}

/// A function's values while it runs. Constants are decoded once, by
/// [`Prepared::new`], and become visible when the run reaches their `const`
/// operation.
struct Frame<'p> {
    vals: HashMap<String, Arr>,
    /// State inputs, apart: only read_state / write_state reach them.
    states: HashMap<String, Arr>,
    consts: &'p HashMap<String, Arr>,
    live_consts: HashSet<&'p str>,
}

impl Frame<'_> {
    fn get(&self, name: &str) -> Option<&Arr> {
        self.vals.get(name).or_else(|| self.live_consts.get(name).and_then(|n| self.consts.get(*n)))
    }
}

fn arg<'a>(op: &'a spec::Operation, frame: &'a Frame, key: &str) -> Result<Option<&'a Arr>> {
    let Some(a) = op.inputs.get(key) else { return Ok(None) };
    match a.arguments.first().and_then(|b| b.binding.as_ref()) {
        Some(binding::Binding::Name(n)) => {
            frame.get(n).map(Some).ok_or_else(|| err(format!("{} reads '{n}' before it is defined", op.r#type)))
        }
        _ => Err(err(format!("{}: parameter '{key}' is not bound by name", op.r#type))),
    }
}

/// The state a parameter names, with its current value.
fn state_arg<'a>(op: &'a spec::Operation, frame: &'a Frame, key: &str) -> Result<(&'a str, &'a Arr)> {
    match op.inputs.get(key).and_then(|a| a.arguments.first()).and_then(|b| b.binding.as_ref()) {
        Some(binding::Binding::Name(n)) => frame
            .states
            .get(n)
            .map(|a| (n.as_str(), a))
            .ok_or_else(|| err(format!("{}: '{n}' is not a state input", op.r#type))),
        _ => Err(err(format!("{}: parameter '{key}' must name a state", op.r#type))),
    }
}

fn req<'a>(op: &'a spec::Operation, frame: &'a Frame, key: &str) -> Result<&'a Arr> {
    arg(op, frame, key)?.ok_or_else(|| err(format!("{} lacks parameter '{key}'", op.r#type)))
}

fn ints_of(op: &spec::Operation, frame: &Frame, key: &str) -> Result<Vec<i64>> {
    req(op, frame, key)?.ints()
}

fn conv_out(i: usize, k: usize, s: usize, d: usize, pb: usize, pe: usize, ceil: bool) -> Result<usize> {
    let eff = d * (k.max(1) - 1) + 1;
    let span = (i + pb + pe).checked_sub(eff).ok_or_else(|| err("kernel larger than padded input"))?;
    Ok(if ceil { span.div_ceil(s) + 1 } else { span / s + 1 })
}

/// Strides, dilations and (begin, end) pads per spatial dim.
type Window = (Vec<usize>, Vec<usize>, Vec<(usize, usize)>);

fn spatial(op: &spec::Operation, frame: &Frame, sp: usize, kernel: &[usize], x: &[usize]) -> Result<Window> {
    let strides: Vec<usize> = match arg(op, frame, "strides")? {
        Some(a) => a.ints()?.iter().map(|&v| v as usize).collect(),
        None => vec![1; sp],
    };
    let dil: Vec<usize> = match arg(op, frame, "dilations")? {
        Some(a) => a.ints()?.iter().map(|&v| v as usize).collect(),
        None => vec![1; sp],
    };
    let pad_type = arg(op, frame, "pad_type")?
        .map(|a| a.string().map(|s| s.to_string()))
        .transpose()?
        .unwrap_or_else(|| "valid".into());
    let pads: Vec<(usize, usize)> = match pad_type.as_str() {
        "custom" => {
            let p = ints_of(op, frame, "pad")?;
            if p.len() != 2 * sp || p.iter().any(|&v| v < 0) {
                return Err(err(format!("{}: pad {p:?} for {sp} spatial dims", op.r#type)));
            }
            (0..sp).map(|i| (p[2 * i] as usize, p[2 * i + 1] as usize)).collect()
        }
        "valid" => vec![(0, 0); sp],
        "same" | "same_lower" => (0..sp)
            .map(|i| {
                let out = x[i].div_ceil(strides[i]);
                let eff = dil[i] * (kernel[i] - 1) + 1;
                let total = ((out - 1) * strides[i] + eff).saturating_sub(x[i]);
                if pad_type == "same" {
                    (total / 2, total - total / 2)
                } else {
                    (total - total / 2, total / 2)
                }
            })
            .collect(),
        other => return Err(err(format!("pad_type '{other}'"))),
    };
    if strides.len() != sp || dil.len() != sp || strides.contains(&0) || dil.contains(&0) {
        return Err(err(format!("{}: bad strides/dilations", op.r#type)));
    }
    Ok((strides, dil, pads))
}

fn pool(op: &spec::Operation, frame: &Frame, max: bool) -> Result<Arr> {
    let x = req(op, frame, "x")?;
    let r = x.shape.len();
    let sp = r - 2;
    let kernel: Vec<usize> = ints_of(op, frame, "kernel_sizes")?.iter().map(|&v| v as usize).collect();
    let (strides, _, pads) = spatial(op, frame, sp, &kernel, &x.shape[2..])?;
    let ceil = arg(op, frame, "ceil_mode")?.map(|a| a.bools().map(|b| b[0])).transpose()?.unwrap_or(false);
    let exclude =
        arg(op, frame, "exclude_padding_from_average")?.map(|a| a.bools().map(|b| b[0])).transpose()?.unwrap_or(false);
    let mut in3 = [1usize; 3];
    let mut k3 = [1usize; 3];
    let mut s3 = [1usize; 3];
    let mut p3 = [(0usize, 0usize); 3];
    let mut o3 = [1usize; 3];
    for i in 0..sp {
        let j = 3 - sp + i;
        in3[j] = x.shape[2 + i];
        k3[j] = kernel[i];
        s3[j] = strides[i];
        p3[j] = pads[i];
        o3[j] = conv_out(in3[j], k3[j], s3[j], 1, pads[i].0, pads[i].1, ceil)?;
    }
    let planes = x.shape[0] * x.shape[1];
    let xv = x.fref()?;
    let osz: usize = o3.iter().product();
    let isz: usize = in3.iter().product();
    let mut y = vec![0f32; planes * osz];
    for p in 0..planes {
        for od in 0..o3[0] {
            for oh in 0..o3[1] {
                for ow in 0..o3[2] {
                    let mut acc = if max { f32::NEG_INFINITY } else { 0.0 };
                    let mut cnt = 0usize;
                    let mut cnt_pad = 0usize;
                    for kd in 0..k3[0] {
                        for kh in 0..k3[1] {
                            for kw in 0..k3[2] {
                                let c = [od * s3[0] + kd, oh * s3[1] + kh, ow * s3[2] + kw];
                                let inside_pad = (0..3).all(|i| c[i] < in3[i] + p3[i].0 + p3[i].1);
                                if inside_pad {
                                    cnt_pad += 1;
                                }
                                if (0..3).any(|i| c[i] < p3[i].0 || c[i] - p3[i].0 >= in3[i]) {
                                    continue;
                                }
                                let v = xv
                                    [p * isz + ((c[0] - p3[0].0) * in3[1] + c[1] - p3[1].0) * in3[2] + c[2] - p3[2].0];
                                if max {
                                    acc = acc.max(v)
                                } else {
                                    acc += v
                                }
                                cnt += 1;
                            }
                        }
                    }
                    let div = if exclude { cnt } else { cnt_pad };
                    y[p * osz + (od * o3[1] + oh) * o3[2] + ow] = if max { acc } else { acc / div.max(1) as f32 };
                }
            }
        }
    }
    let mut shape = x.shape[..2].to_vec();
    shape.extend(&o3[3 - sp..]);
    Ok(Arr::f(x.dtype, shape, y))
}

fn matmul_batched(a: &[f32], ash: &[usize], b: &[f32], bsh: &[usize]) -> Result<(Vec<f32>, Vec<usize>)> {
    // Rank-1 operands are promoted as numpy does.
    let (mut ash, mut bsh) = (ash.to_vec(), bsh.to_vec());
    let (a1, b1) = (ash.len() == 1, bsh.len() == 1);
    if a1 {
        ash.insert(0, 1);
    }
    if b1 {
        bsh.push(1);
    }
    let (m, k) = (ash[ash.len() - 2], ash[ash.len() - 1]);
    let (k2, n) = (bsh[bsh.len() - 2], bsh[bsh.len() - 1]);
    if k != k2 {
        return Err(err(format!("matmul inner dims {k} and {k2} differ")));
    }
    let batch = broadcast_shape(&ash[..ash.len() - 2], &bsh[..bsh.len() - 2])?;
    let nb: usize = batch.iter().product();
    let ia = broadcast_index(&ash[..ash.len() - 2], &batch);
    let ib = broadcast_index(&bsh[..bsh.len() - 2], &batch);
    let mut y = vec![0f32; nb * m * n];
    for bi in 0..nb {
        let (pa, pb) = (ia.get(bi).copied().unwrap_or(0), ib.get(bi).copied().unwrap_or(0));
        sgemm(
            MatRef::row_major(&a[pa * m * k..(pa + 1) * m * k], m, k),
            MatRef::row_major(&b[pb * k * n..(pb + 1) * k * n], k, n),
            &mut y[bi * m * n..(bi + 1) * m * n],
            n,
            1.0,
            0.0,
            Parallel::Rayon(0),
        );
    }
    let mut shape = batch;
    if !a1 {
        shape.push(m);
    }
    if !b1 {
        shape.push(n);
    }
    Ok((y, shape))
}

fn float_dtype(a: &Arr) -> DataType {
    if matches!(a.dtype, DataType::Float16 | DataType::Float32) {
        a.dtype
    } else {
        DataType::Float32
    }
}

fn run_op(op: &spec::Operation, frame: &Frame) -> Result<Vec<Arr>> {
    let x = || req(op, frame, "x");
    let t = op.r#type.as_str();
    let one = |a: Arr| Ok(vec![a]);
    match t {
        "add" | "sub" | "mul" | "real_div" | "pow" | "maximum" | "minimum" | "floor_div" => {
            let (a, b) = (x()?, req(op, frame, "y")?);
            if a.dtype == DataType::Int32 && b.dtype == DataType::Int32 {
                return one(binary_i(a, b, |p, q| match t {
                    "add" => p + q,
                    "sub" => p - q,
                    "mul" => p * q,
                    "maximum" => p.max(q),
                    "minimum" => p.min(q),
                    "floor_div" | "real_div" => {
                        if q == 0 {
                            0
                        } else {
                            p.div_euclid(q)
                        }
                    }
                    _ => p.pow(q.clamp(0, 62) as u32),
                })?);
            }
            if a.dtype != b.dtype {
                return Err(err(format!("{t}: operand types {:?} and {:?} differ", a.dtype, b.dtype)));
            }
            one(binary_f(a, b, a.dtype, |p, q| match t {
                "add" => p + q,
                "sub" => p - q,
                "mul" => p * q,
                "real_div" => p / q,
                "pow" => p.powf(q),
                "maximum" => p.max(q),
                "minimum" => p.min(q),
                _ => (p / q).floor(),
            })?)
        }
        "equal" | "not_equal" | "less" | "less_equal" | "greater" | "greater_equal" => {
            let (a, b) = (x()?, req(op, frame, "y")?);
            one(compare(a, b, |p, q| match t {
                "equal" => p == q,
                "not_equal" => p != q,
                "less" => p < q,
                "less_equal" => p <= q,
                "greater" => p > q,
                _ => p >= q,
            })?)
        }
        "logical_and" | "logical_or" => {
            let (a, b) = (x()?, req(op, frame, "y")?);
            let out = broadcast_shape(&a.shape, &b.shape)?;
            let (av, bv) = (a.bools()?, b.bools()?);
            let (ia, ib) = (broadcast_index(&a.shape, &out), broadcast_index(&b.shape, &out));
            let v = ia
                .iter()
                .zip(&ib)
                .map(|(&i, &j)| if t == "logical_and" { av[i] && bv[j] } else { av[i] || bv[j] })
                .collect();
            one(Arr { dtype: DataType::Bool, shape: out, data: Data::B(v) })
        }
        "logical_not" => {
            let a = x()?;
            one(Arr {
                dtype: DataType::Bool,
                shape: a.shape.clone(),
                data: Data::B(a.bools()?.iter().map(|b| !b).collect()),
            })
        }
        "select" => {
            let (c, a, b) = (req(op, frame, "cond")?, req(op, frame, "a")?, req(op, frame, "b")?);
            let out = broadcast_shape(&broadcast_shape(&c.shape, &a.shape)?, &b.shape)?;
            let cv = c.bools()?;
            let (ic, ia, ib) =
                (broadcast_index(&c.shape, &out), broadcast_index(&a.shape, &out), broadcast_index(&b.shape, &out));
            if a.dtype == DataType::Int32 {
                let (av, bv) = (a.ints()?, b.ints()?);
                let v = (0..ic.len()).map(|i| if cv[ic[i]] { av[ia[i]] } else { bv[ib[i]] } as i32).collect();
                return one(Arr { dtype: DataType::Int32, shape: out, data: Data::I(v) });
            }
            let (av, bv) = (a.floats()?, b.floats()?);
            let v = (0..ic.len()).map(|i| if cv[ic[i]] { av[ia[i]] } else { bv[ib[i]] }).collect();
            one(Arr::f(a.dtype, out, v))
        }
        "relu" => one(unary(x()?, |v| v.max(0.0))?),
        "sigmoid" => one(unary(x()?, |v| 1.0 / (1.0 + (-v).exp()))?),
        "tanh" => one(unary(x()?, f32::tanh)?),
        "erf" => one(unary(x()?, |v| tessera_kernels::elementwise::erf_f64(v as f64) as f32)?),
        "exp" => one(unary(x()?, f32::exp)?),
        "log" => one(unary(x()?, f32::ln)?),
        "sqrt" => one(unary(x()?, f32::sqrt)?),
        "abs" => one(unary(x()?, f32::abs)?),
        "floor" => one(unary(x()?, f32::floor)?),
        "ceil" => one(unary(x()?, f32::ceil)?),
        "sin" => one(unary(x()?, f32::sin)?),
        "cos" => one(unary(x()?, f32::cos)?),
        "softplus" => one(unary(x()?, |v| if v > 20.0 { v } else { v.exp().ln_1p() })?),
        "leaky_relu" | "elu" => {
            let al = req(op, frame, "alpha")?.scalar_f()?;
            if t == "elu" {
                one(unary(x()?, |v| if v > 0.0 { v } else { al * (v.exp() - 1.0) })?)
            } else {
                one(unary(x()?, |v| if v > 0.0 { v } else { al * v })?)
            }
        }
        "sigmoid_hard" => {
            let (al, be) = (req(op, frame, "alpha")?.scalar_f()?, req(op, frame, "beta")?.scalar_f()?);
            one(unary(x()?, |v| (al * v + be).clamp(0.0, 1.0))?)
        }
        "clip" => {
            let (lo, hi) = (req(op, frame, "alpha")?.scalar_f()?, req(op, frame, "beta")?.scalar_f()?);
            one(unary(x()?, |v| v.max(lo).min(hi))?)
        }
        "gelu" => {
            let mode = arg(op, frame, "mode")?
                .map(|m| m.string().map(|s| s.to_string()))
                .transpose()?
                .unwrap_or_else(|| "EXACT".into());
            match mode.as_str() {
                "EXACT" => one(unary(x()?, |v| {
                    0.5 * v * (1.0 + tessera_kernels::elementwise::erf_f64(v as f64 / std::f64::consts::SQRT_2) as f32)
                })?),
                "TANH_APPROXIMATION" => {
                    one(unary(x()?, |v| 0.5 * v * (1.0 + (0.797_884_6 * (v + 0.044715 * v * v * v)).tanh()))?)
                }
                "SIGMOID_APPROXIMATION" => one(unary(x()?, |v| v / (1.0 + (-1.702 * v).exp()))?),
                m => Err(err(format!("gelu mode '{m}'"))),
            }
        }
        "softmax" => {
            let a = x()?;
            let axis = norm_axis(req(op, frame, "axis")?.scalar_i()?, a.shape.len())?;
            let r = a.shape.len();
            let mut perm: Vec<usize> = (0..r).filter(|&d| d != axis).collect();
            perm.push(axis);
            let tr = transpose(a, &perm)?;
            let lane = a.shape[axis];
            let mut v = tr.fref()?.to_vec();
            for row in v.chunks_mut(lane.max(1)) {
                let m = row.iter().fold(f32::NEG_INFINITY, |p, &q| p.max(q));
                let mut s = 0.0;
                for e in row.iter_mut() {
                    *e = (*e - m).exp();
                    s += *e;
                }
                row.iter_mut().for_each(|e| *e /= s);
            }
            let mut inv = vec![0; r];
            for (i, &p) in perm.iter().enumerate() {
                inv[p] = i;
            }
            one(transpose(&Arr::f(a.dtype, tr.shape.clone(), v), &inv)?)
        }
        "layer_norm" => {
            let a = x()?;
            let r = a.shape.len();
            let mut axes: Vec<usize> =
                ints_of(op, frame, "axes")?.iter().map(|&v| norm_axis(v, r)).collect::<Result<_>>()?;
            axes.sort();
            axes.dedup();
            // Contiguous axes: the tensor is [outer, lane, inner] (the
            // channels-first layout normalizes axis 1 of [B, C, 1, S]).
            if axes.is_empty() || axes.windows(2).any(|w| w[1] != w[0] + 1) {
                return Err(err(format!("layer_norm over axes {axes:?} (only contiguous axes are interpreted)")));
            }
            let lane: usize = axes.iter().map(|&v| a.shape[v]).product();
            let inner: usize = a.shape[axes[axes.len() - 1] + 1..].iter().product();
            let eps = arg(op, frame, "epsilon")?.map(|e| e.scalar_f()).transpose()?.unwrap_or(1e-5);
            let gamma = arg(op, frame, "gamma")?.map(|g| g.floats()).transpose()?;
            let beta = arg(op, frame, "beta")?.map(|g| g.floats()).transpose()?;
            for p in [&gamma, &beta].into_iter().flatten() {
                if p.len() != lane {
                    return Err(err(format!("layer_norm gamma/beta of {} values for {lane}", p.len())));
                }
            }
            let mut v = a.fref()?.to_vec();
            if v.is_empty() {
                return one(Arr::f(a.dtype, a.shape.clone(), v));
            }
            for block in v.chunks_mut(lane * inner) {
                for j in 0..inner {
                    let at = |i: usize| i * inner + j;
                    let mean = (0..lane).map(|i| block[at(i)] as f64).sum::<f64>() / lane as f64;
                    let var = (0..lane).map(|i| (block[at(i)] as f64 - mean).powi(2)).sum::<f64>() / lane as f64;
                    let inv = 1.0 / (var + eps as f64).sqrt();
                    for i in 0..lane {
                        let e = &mut block[at(i)];
                        let mut y = ((*e as f64 - mean) * inv) as f32;
                        if let Some(g) = &gamma {
                            y *= g[i];
                        }
                        if let Some(b) = &beta {
                            y += b[i];
                        }
                        *e = y;
                    }
                }
            }
            one(Arr::f(a.dtype, a.shape.clone(), v))
        }
        "local_response_norm" => {
            // x / (k + alpha / size * sum of squares over `size` channels
            // centred on each channel)^beta, the ONNX/PyTorch definition.
            let a = x()?;
            let size = req(op, frame, "size")?.scalar_i()?.max(1) as usize;
            let al = arg(op, frame, "alpha")?.map(|v| v.scalar_f()).transpose()?.unwrap_or(1e-4);
            let be = arg(op, frame, "beta")?.map(|v| v.scalar_f()).transpose()?.unwrap_or(0.75);
            let k = arg(op, frame, "k")?.map(|v| v.scalar_f()).transpose()?.unwrap_or(1.0);
            if a.shape.len() < 3 {
                return Err(err("local_response_norm needs rank >= 3"));
            }
            let (c, inner) = (a.shape[1], a.shape[2..].iter().product::<usize>());
            let xv = a.fref()?;
            let (lo, hi) = ((size - 1) / 2, size / 2);
            let mut y = vec![0f32; xv.len()];
            for (i, out) in y.iter_mut().enumerate() {
                let (ch, base) = ((i / inner) % c, i - ((i / inner) % c) * inner);
                let (c0, c1) = (ch.saturating_sub(lo), (ch + hi).min(c - 1));
                let sq: f32 = (c0..=c1).map(|cc| xv[base + cc * inner].powi(2)).sum();
                *out = xv[i] / (k + al / size as f32 * sq).powf(be);
            }
            one(Arr::f(a.dtype, a.shape.clone(), y))
        }
        "batch_norm" => {
            let a = x()?;
            let (mean, var) = (req(op, frame, "mean")?.floats()?, req(op, frame, "variance")?.floats()?);
            let c = a.shape[1];
            let gamma = arg(op, frame, "gamma")?.map(|g| g.floats()).transpose()?.unwrap_or(vec![1.0; c]);
            let beta = arg(op, frame, "beta")?.map(|g| g.floats()).transpose()?.unwrap_or(vec![0.0; c]);
            let eps = arg(op, frame, "epsilon")?.map(|e| e.scalar_f()).transpose()?.unwrap_or(1e-5);
            if [mean.len(), var.len(), gamma.len(), beta.len()].iter().any(|&l| l != c) {
                return Err(err("batch_norm parameters do not match the channels"));
            }
            let inner: usize = a.shape[2..].iter().product();
            let mut v = a.fref()?.to_vec();
            for (i, e) in v.iter_mut().enumerate() {
                let ch = (i / inner) % c;
                *e = (*e - mean[ch]) / (var[ch] + eps).sqrt() * gamma[ch] + beta[ch];
            }
            one(Arr::f(a.dtype, a.shape.clone(), v))
        }
        "linear" => {
            let a = x()?;
            let w = req(op, frame, "weight")?;
            if w.shape.len() != 2 || a.shape.last() != Some(&w.shape[1]) {
                return Err(err(format!("linear: x {:?} with weight {:?} ([out, in])", a.shape, w.shape)));
            }
            let (nout, k) = (w.shape[0], w.shape[1]);
            let m = a.numel() / k.max(1);
            let mut y = vec![0f32; m * nout];
            let wv = w.floats()?;
            sgemm(
                MatRef::row_major(a.fref()?, m, k),
                MatRef::row_major(&wv, nout, k).t(),
                &mut y,
                nout,
                1.0,
                0.0,
                Parallel::Rayon(0),
            );
            if let Some(b) = arg(op, frame, "bias")? {
                let bv = b.floats()?;
                if bv.len() != nout {
                    return Err(err("linear bias size"));
                }
                for row in y.chunks_mut(nout) {
                    row.iter_mut().zip(&bv).for_each(|(e, &b)| *e += b);
                }
            }
            let mut shape = a.shape.clone();
            *shape.last_mut().expect("rank >= 1") = nout;
            one(Arr::f(a.dtype, shape, y))
        }
        "matmul" => {
            let (a, b) = (x()?, req(op, frame, "y")?);
            let tx = arg(op, frame, "transpose_x")?.map(|v| v.bools().map(|b| b[0])).transpose()?.unwrap_or(false);
            let ty = arg(op, frame, "transpose_y")?.map(|v| v.bools().map(|b| b[0])).transpose()?.unwrap_or(false);
            let swap_last = |a: &Arr| -> Result<Arr> {
                let r = a.shape.len();
                let mut p: Vec<usize> = (0..r).collect();
                p.swap(r - 1, r - 2);
                transpose(a, &p)
            };
            let a2 = if tx { swap_last(a)? } else { a.clone() };
            let b2 = if ty { swap_last(b)? } else { b.clone() };
            let (y, shape) = matmul_batched(&a2.floats()?, &a2.shape, &b2.floats()?, &b2.shape)?;
            one(Arr::f(float_dtype(a), shape, y))
        }
        "conv" => {
            let a = x()?;
            let w = req(op, frame, "weight")?;
            let r = a.shape.len();
            if !(3..=5).contains(&r) || w.shape.len() != r {
                return Err(err(format!("conv: x {:?}, weight {:?}", a.shape, w.shape)));
            }
            let sp = r - 2;
            let groups = arg(op, frame, "groups")?.map(|g| g.scalar_i()).transpose()?.unwrap_or(1) as usize;
            let kernel = w.shape[2..].to_vec();
            let (strides, dil, pads) = spatial(op, frame, sp, &kernel, &a.shape[2..])?;
            if groups == 0 || a.shape[1] != w.shape[1] * groups || w.shape[0] % groups != 0 {
                return Err(err(format!("conv: {} input channels, weight {:?}, groups {groups}", a.shape[1], w.shape)));
            }
            let mut g = ConvGeom {
                batch: a.shape[0],
                in_channels: a.shape[1],
                out_channels: w.shape[0],
                groups,
                input: [1; 3],
                output: [1; 3],
                kernel: [1; 3],
                stride: [1; 3],
                pad: [0; 3],
                dilation: [1; 3],
            };
            for i in 0..sp {
                let j = 3 - sp + i;
                g.input[j] = a.shape[2 + i];
                g.kernel[j] = kernel[i];
                g.stride[j] = strides[i];
                g.dilation[j] = dil[i];
                g.pad[j] = pads[i].0 as isize;
                g.output[j] = conv_out(a.shape[2 + i], kernel[i], strides[i], dil[i], pads[i].0, pads[i].1, false)?;
            }
            let mut y = vec![0f32; g.batch * g.out_channels * g.out_size()];
            let bias = arg(op, frame, "bias")?.map(|b| b.floats()).transpose()?;
            conv_forward(&g, a.fref()?, &w.floats()?, bias.as_deref(), &mut y);
            let mut shape = vec![g.batch, g.out_channels];
            shape.extend(&g.output[3 - sp..]);
            one(Arr::f(a.dtype, shape, y))
        }
        "max_pool" => one(pool(op, frame, true)?),
        "avg_pool" => one(pool(op, frame, false)?),
        "reduce_mean" | "reduce_sum" | "reduce_max" | "reduce_min" | "reduce_prod" | "reduce_l2_norm" => {
            let a = x()?;
            let r = a.shape.len();
            let axes: Vec<usize> = match arg(op, frame, "axes")? {
                Some(ax) => ax.ints()?.iter().map(|&v| norm_axis(v, r)).collect::<Result<_>>()?,
                None => (0..r).collect(),
            };
            let keep = arg(op, frame, "keep_dims")?.map(|k| k.bools().map(|b| b[0])).transpose()?.unwrap_or(false);
            let f: fn(&[f32]) -> f32 = match t {
                "reduce_mean" => |l| (l.iter().map(|&v| v as f64).sum::<f64>() / l.len().max(1) as f64) as f32,
                "reduce_sum" => |l| l.iter().map(|&v| v as f64).sum::<f64>() as f32,
                "reduce_max" => |l| l.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)),
                "reduce_min" => |l| l.iter().fold(f32::INFINITY, |a, &b| a.min(b)),
                "reduce_prod" => |l| l.iter().product(),
                _ => |l| l.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt() as f32,
            };
            let mut out = reduce(a, &axes, keep, f)?;
            if a.dtype == DataType::Int32 {
                out = Arr {
                    dtype: DataType::Int32,
                    shape: out.shape.clone(),
                    data: Data::I(out.floats()?.iter().map(|&v| v as i32).collect()),
                };
            }
            one(out)
        }
        "reduce_argmax" | "reduce_argmin" => {
            let a = x()?;
            let axis = norm_axis(req(op, frame, "axis")?.scalar_i()?, a.shape.len())?;
            let keep = arg(op, frame, "keep_dims")?.map(|k| k.bools().map(|b| b[0])).transpose()?.unwrap_or(false);
            let max = t == "reduce_argmax";
            let r = reduce(a, &[axis], keep, |l| {
                let mut best = 0;
                for (i, &v) in l.iter().enumerate() {
                    if (max && v > l[best]) || (!max && v < l[best]) {
                        best = i;
                    }
                }
                best as f32
            })?;
            one(Arr {
                dtype: DataType::Int32,
                shape: r.shape.clone(),
                data: Data::I(r.floats()?.iter().map(|&v| v as i32).collect()),
            })
        }
        "reshape" => {
            let a = x()?;
            let s = ints_of(op, frame, "shape")?;
            let n = a.numel();
            let known: usize = s.iter().filter(|&&d| d > 0).map(|&d| d as usize).product();
            let mut shape = Vec::with_capacity(s.len());
            for (i, &d) in s.iter().enumerate() {
                shape.push(match d {
                    -1 => n.checked_div(known).unwrap_or(0),
                    0 => *a.shape.get(i).ok_or_else(|| err("reshape 0 past the input rank"))?,
                    d if d > 0 => d as usize,
                    d => return Err(err(format!("reshape dim {d}"))),
                });
            }
            if checked_numel(&shape)? != n {
                return Err(err(format!("reshape of {:?} to {s:?}", a.shape)));
            }
            one(Arr { dtype: a.dtype, shape, data: a.data.clone() })
        }
        "transpose" => {
            let perm: Vec<usize> =
                ints_of(op, frame, "perm")?.iter().map(|&v| norm_axis(v, x()?.shape.len())).collect::<Result<_>>()?;
            one(transpose(x()?, &perm)?)
        }
        "concat" => {
            let vals: Vec<&Arr> = op
                .inputs
                .get("values")
                .ok_or_else(|| err("concat without values"))?
                .arguments
                .iter()
                .map(|b| match &b.binding {
                    Some(binding::Binding::Name(n)) => {
                        frame.get(n).ok_or_else(|| err(format!("concat reads undefined '{n}'")))
                    }
                    _ => Err(err("concat value not bound by name")),
                })
                .collect::<Result<_>>()?;
            let first = vals.first().ok_or_else(|| err("concat of nothing"))?;
            let r = first.shape.len();
            let axis = norm_axis(req(op, frame, "axis")?.scalar_i()?, r)?;
            let outer: usize = first.shape[..axis].iter().product();
            let mut shape = first.shape.clone();
            shape[axis] = 0;
            for v in &vals {
                if v.shape.len() != r
                    || (0..r).any(|d| d != axis && v.shape[d] != first.shape[d])
                    || v.dtype != first.dtype
                {
                    return Err(err(format!("concat of {:?} and {:?} along {axis}", first.shape, v.shape)));
                }
                shape[axis] += v.shape[axis];
            }
            // Interleave the per-input blocks of each outer index.
            let mut parts: Vec<Data> = Vec::new();
            for o in 0..outer {
                for v in &vals {
                    let blk: usize = v.shape[axis..].iter().product();
                    parts.push(pick(&v.data, &(o * blk..(o + 1) * blk).collect::<Vec<_>>()));
                }
            }
            let refs: Vec<&Data> = parts.iter().collect();
            one(Arr { dtype: first.dtype, shape, data: concat_data(&refs)? })
        }
        "split" => {
            let a = x()?;
            let axis = norm_axis(req(op, frame, "axis")?.scalar_i()?, a.shape.len())?;
            let sizes: Vec<usize> = match arg(op, frame, "split_sizes")? {
                Some(s) => s.ints()?.iter().map(|&v| v as usize).collect(),
                None => {
                    let k = req(op, frame, "num_splits")?.scalar_i()? as usize;
                    vec![a.shape[axis] / k.max(1); k]
                }
            };
            if sizes.iter().sum::<usize>() != a.shape[axis] {
                return Err(err(format!("split sizes {sizes:?} for dim {}", a.shape[axis])));
            }
            let outer: usize = a.shape[..axis].iter().product();
            let inner: usize = a.shape[axis + 1..].iter().product();
            let mut start = 0;
            let mut outs = Vec::new();
            for &s in &sizes {
                let mut idx = Vec::with_capacity(outer * s * inner);
                for o in 0..outer {
                    let base = o * a.shape[axis] * inner + start * inner;
                    idx.extend(base..base + s * inner);
                }
                let mut shape = a.shape.clone();
                shape[axis] = s;
                outs.push(Arr { dtype: a.dtype, shape, data: pick(&a.data, &idx) });
                start += s;
            }
            Ok(outs)
        }
        "slice_by_index" => {
            let a = x()?;
            let r = a.shape.len();
            let begin = ints_of(op, frame, "begin")?;
            let end = ints_of(op, frame, "end")?;
            let stride = arg(op, frame, "stride")?.map(|s| s.ints()).transpose()?.unwrap_or(vec![1; r]);
            if begin.len() != r || end.len() != r || stride.len() != r || stride.iter().any(|&s| s <= 0) {
                return Err(err("slice_by_index parameters (positive strides only)"));
            }
            let mut ranges = Vec::with_capacity(r);
            for d in 0..r {
                let n = a.shape[d] as i64;
                let b = (if begin[d] < 0 { begin[d] + n } else { begin[d] }).clamp(0, n);
                let e = (if end[d] < 0 { end[d] + n } else { end[d] }).clamp(0, n);
                ranges.push((b as usize, e.max(b) as usize, stride[d] as usize));
            }
            let shape: Vec<usize> = ranges.iter().map(|&(b, e, s)| (e - b).div_ceil(s)).collect();
            let ist = strides(&a.shape);
            let ost = strides(&shape);
            let n: usize = shape.iter().product();
            let idx: Vec<usize> = (0..n)
                .map(|flat| {
                    let mut rem = flat;
                    (0..r).fold(0, |acc, d| {
                        let c = rem / ost[d];
                        rem %= ost[d];
                        acc + (ranges[d].0 + c * ranges[d].2) * ist[d]
                    })
                })
                .collect();
            one(Arr { dtype: a.dtype, shape, data: pick(&a.data, &idx) })
        }
        "gather" => {
            let a = x()?;
            let ind = req(op, frame, "indices")?;
            let axis =
                norm_axis(arg(op, frame, "axis")?.map(|v| v.scalar_i()).transpose()?.unwrap_or(0), a.shape.len())?;
            let d = a.shape[axis] as i64;
            let iv = ind.ints()?;
            let outer: usize = a.shape[..axis].iter().product();
            let inner: usize = a.shape[axis + 1..].iter().product();
            let mut idx = Vec::with_capacity(outer * iv.len() * inner);
            for o in 0..outer {
                for &i in &iv {
                    let i = if i < 0 { i + d } else { i };
                    if i < 0 || i >= d {
                        return Err(Error::Input(format!("gather index {i} out of range for a dimension of {d}")));
                    }
                    let base = (o * d as usize + i as usize) * inner;
                    idx.extend(base..base + inner);
                }
            }
            let mut shape = a.shape[..axis].to_vec();
            shape.extend(&ind.shape);
            shape.extend(&a.shape[axis + 1..]);
            one(Arr { dtype: a.dtype, shape, data: pick(&a.data, &idx) })
        }
        "tile" => {
            let a = x()?;
            let reps: Vec<usize> = ints_of(op, frame, "reps")?.iter().map(|&v| v as usize).collect();
            if reps.len() != a.shape.len() {
                return Err(err("tile reps rank"));
            }
            let shape: Vec<usize> = a.shape.iter().zip(&reps).map(|(&d, &r)| d * r).collect();
            let ist = strides(&a.shape);
            let ost = strides(&shape);
            let n = checked_numel(&shape)?;
            let idx: Vec<usize> = (0..n)
                .map(|flat| {
                    let mut rem = flat;
                    (0..shape.len()).fold(0, |acc, d| {
                        let c = rem / ost[d];
                        rem %= ost[d];
                        acc + (c % a.shape[d]) * ist[d]
                    })
                })
                .collect();
            one(Arr { dtype: a.dtype, shape, data: pick(&a.data, &idx) })
        }
        "pad" => {
            let a = x()?;
            let p = ints_of(op, frame, "pad")?;
            let mode = arg(op, frame, "mode")?
                .map(|m| m.string().map(|s| s.to_string()))
                .transpose()?
                .unwrap_or_else(|| "constant".into());
            if mode != "constant" {
                return Err(err(format!("pad mode '{mode}' is not interpreted")));
            }
            let cv = arg(op, frame, "constant_val")?.map(|c| c.scalar_f()).transpose()?.unwrap_or(0.0);
            let r = a.shape.len();
            // MIL pads the last len/2 dims.
            let k = p.len() / 2;
            let mut before = vec![0usize; r];
            let mut shape = a.shape.clone();
            for i in 0..k {
                let d = r - k + i;
                before[d] = p[2 * i] as usize;
                shape[d] += (p[2 * i] + p[2 * i + 1]) as usize;
            }
            let av = a.floats()?;
            let mut y = vec![cv; checked_numel(&shape)?];
            let ist = strides(&a.shape);
            let ost = strides(&shape);
            for (flat, &v) in av.iter().enumerate() {
                let mut rem = flat;
                let mut o = 0;
                for d in 0..r {
                    let c = rem / ist[d];
                    rem %= ist[d];
                    o += (c + before[d]) * ost[d];
                }
                y[o] = v;
            }
            one(Arr::f(a.dtype, shape, y))
        }
        "cumsum" => {
            let a = x()?;
            let axis = norm_axis(req(op, frame, "axis")?.scalar_i()?, a.shape.len())?;
            let ex = arg(op, frame, "exclusive")?.map(|k| k.bools().map(|b| b[0])).transpose()?.unwrap_or(false);
            let rev = arg(op, frame, "reverse")?.map(|k| k.bools().map(|b| b[0])).transpose()?.unwrap_or(false);
            let av = a.floats()?;
            let inner: usize = a.shape[axis + 1..].iter().product();
            let d = a.shape[axis];
            let outer: usize = a.shape[..axis].iter().product();
            let mut y = vec![0f32; av.len()];
            for o in 0..outer {
                for i in 0..inner {
                    let mut acc = 0f32;
                    for s in 0..d {
                        let s = if rev { d - 1 - s } else { s };
                        let at = (o * d + s) * inner + i;
                        if ex {
                            y[at] = acc;
                            acc += av[at];
                        } else {
                            acc += av[at];
                            y[at] = acc;
                        }
                    }
                }
            }
            if a.dtype == DataType::Int32 {
                return one(Arr {
                    dtype: DataType::Int32,
                    shape: a.shape.clone(),
                    data: Data::I(y.iter().map(|&v| v as i32).collect()),
                });
            }
            one(Arr::f(a.dtype, a.shape.clone(), y))
        }
        "cast" => {
            let a = x()?;
            let to = req(op, frame, "dtype")?.string()?.to_string();
            one(match to.as_str() {
                "fp16" => Arr::f(DataType::Float16, a.shape.clone(), a.floats()?),
                "fp32" => Arr::f(DataType::Float32, a.shape.clone(), a.floats()?),
                "int32" => Arr {
                    dtype: DataType::Int32,
                    shape: a.shape.clone(),
                    data: Data::I(a.floats()?.iter().map(|&v| v as i32).collect()),
                },
                "bool" => Arr { dtype: DataType::Bool, shape: a.shape.clone(), data: Data::B(a.bools()?) },
                other => return Err(err(format!("cast to '{other}'"))),
            })
        }
        "identity" => one(x()?.clone()),
        "read_state" => one(state_arg(op, frame, "input")?.1.clone()),
        "constexpr_affine_dequantize" => {
            let q = req(op, frame, "quantized_data")?;
            let zp = req(op, frame, "zero_point")?.floats()?;
            let sc = req(op, frame, "scale")?;
            let axis = norm_axis(req(op, frame, "axis")?.scalar_i()?, q.shape.len())?;
            let scv = sc.floats()?;
            let qv = q.floats()?;
            let inner: usize = q.shape[axis + 1..].iter().product();
            let d = q.shape[axis];
            for v in [&zp, &scv] {
                if v.len() != 1 && v.len() != d {
                    return Err(err("affine dequantize: scale/zero point size"));
                }
            }
            let y = qv
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let c = (i / inner) % d;
                    let s = scv[if scv.len() == 1 { 0 } else { c }];
                    let z = zp[if zp.len() == 1 { 0 } else { c }];
                    (v - z) * s
                })
                .collect();
            one(Arr::f(sc.dtype, q.shape.clone(), y))
        }
        // iOS 18 form: indices of the output's shape, one table per block.
        "constexpr_lut_to_dense" if !op.inputs.contains_key("shape") => {
            let lut = req(op, frame, "lut")?;
            let ix = req(op, frame, "indices")?;
            let Data::U8(idx) = &ix.data else { return Err(err("lut indices must be unsigned sub-byte or uint8")) };
            let k = ix.shape.len();
            if lut.shape.len() != k + 2 || lut.shape[k + 1] != 1 {
                return Err(err(format!(
                    "lut of shape {:?} for indices of rank {k} (vector palettes are not interpreted)",
                    lut.shape
                )));
            }
            let entries = lut.shape[k];
            let bits = match ix.dtype {
                DataType::Uint1 => 1,
                DataType::Uint2 => 2,
                DataType::Uint3 => 3,
                DataType::Uint4 => 4,
                DataType::Uint6 => 6,
                DataType::Uint8 => 8,
                d => return Err(err(format!("lut indices of type {d:?}"))),
            };
            if entries != 1 << bits {
                return Err(err(format!("{entries} lut entries for {bits}-bit indices")));
            }
            let mut block = Vec::with_capacity(k);
            for d in 0..k {
                let g = lut.shape[d];
                if g == 0 || ix.shape[d] % g != 0 {
                    return Err(err(format!("lut dim {d} ({g}) does not divide indices dim {}", ix.shape[d])));
                }
                block.push(ix.shape[d] / g);
            }
            let lv = lut.floats()?;
            let ist = strides(&ix.shape);
            let gst = strides(&lut.shape[..k]);
            let mut out = Vec::with_capacity(idx.len());
            for (flat, &i) in idx.iter().enumerate() {
                let table: usize = (0..k).map(|d| (flat / ist[d] % ix.shape[d]) / block[d] * gst[d]).sum();
                out.push(lv[table * entries + i as usize]);
            }
            one(Arr::f(lut.dtype, ix.shape.clone(), out))
        }
        "constexpr_lut_to_dense" => {
            let lut = req(op, frame, "lut")?;
            let shape: Vec<usize> = ints_of(op, frame, "shape")?.iter().map(|&v| v as usize).collect();
            let n = checked_numel(&shape)?;
            let k = lut.numel();
            if !matches!(k, 2 | 4 | 16 | 64 | 256) {
                return Err(err(format!("lut of {k} entries")));
            }
            let bits = k.trailing_zeros() as u8;
            let packed = match &req(op, frame, "indices")?.data {
                Data::U8(v) => v.clone(),
                _ => return Err(err("lut indices must be uint8")),
            };
            if packed.len() != (n * bits as usize).div_ceil(8) {
                return Err(err("lut indices size"));
            }
            let idx = unpack_bits(&packed, bits, n)?;
            let lv = lut.floats()?;
            one(Arr::f(lut.dtype, shape, idx.iter().map(|&i| lv[i as usize]).collect()))
        }
        other => Err(err(format!("MIL operation '{other}' is not interpreted"))),
    }
}

fn check_declared(op: &spec::Operation, decl: &spec::NamedValueType, a: &Arr) -> Result<()> {
    let (dt, shape) = tensor_type(decl.r#type.as_ref().ok_or_else(|| err("output without a type"))?)?;
    if shape != a.shape || dt != a.dtype {
        return Err(err(format!(
            "{} '{}' computes {:?} {:?} but declares {dt:?} {shape:?}",
            op.r#type, decl.name, a.dtype, a.shape
        )));
    }
    Ok(())
}

/// The state inputs of a function: (name, fp16 shape), bounded.
fn state_inputs(inputs: &[spec::NamedValueType]) -> Result<Vec<(String, Vec<usize>)>> {
    let mut out = Vec::new();
    for inp in inputs {
        let t = inp.r#type.as_ref().ok_or_else(|| err("input without a type"))?;
        if let Some(value_type::Type::StateType(st)) = &t.r#type {
            let (dt, shape) = tensor_type(st.wrapped_type.as_ref().ok_or_else(|| err("state wraps no type"))?)?;
            if dt != DataType::Float16 {
                return Err(err(format!("state '{}' wraps {dt:?}: Core ML states are fp16", inp.name)));
            }
            if shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).is_none_or(|n| n > MAX_ELEMENTS) {
                return Err(err(format!("state '{}' of shape {shape:?} is too large", inp.name)));
            }
            out.push((inp.name.clone(), shape));
        }
    }
    Ok(out)
}

/// One function of a package, ready to run many times: its constants
/// (weights included) decoded and type-checked once.
pub struct Prepared {
    inputs: Vec<spec::NamedValueType>,
    ops: Vec<spec::Operation>,
    outputs: Vec<String>,
    consts: HashMap<String, Arr>,
    /// State inputs: (name, fp16 shape), checked once.
    states: Vec<(String, Vec<usize>)>,
}

impl Prepared {
    /// Function `name` ("main" or a multifunction entry) of `pkg`.
    pub fn new(pkg: &Package, name: &str) -> Result<Prepared> {
        let prog = pkg.model.ml_program.as_ref().ok_or_else(|| err("the model is not an ML Program"))?;
        let f = prog.functions.get(name).ok_or_else(|| {
            err(format!(
                "no function '{name}' (has: {})",
                prog.functions.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        let block =
            f.block_specializations.get(&f.opset).ok_or_else(|| err(format!("no block for opset '{}'", f.opset)))?;
        let blobs = if pkg.weights.is_empty() { None } else { Some(BlobReader::new(&pkg.weights)?) };
        let mut consts = HashMap::new();
        for op in block.operations.iter().filter(|op| op.r#type == "const") {
            let v = op.attributes.get("val").ok_or_else(|| err("const without val"))?;
            let a = const_value(v, blobs.as_ref())?;
            let [decl] = op.outputs.as_slice() else {
                return Err(err(format!("const produced 1 value for {} declared outputs", op.outputs.len())));
            };
            check_declared(op, decl, &a)?;
            consts.insert(decl.name.clone(), a);
        }
        let states = state_inputs(&f.inputs)?;
        Ok(Prepared {
            inputs: f.inputs.clone(),
            ops: block.operations.clone(),
            outputs: block.outputs.clone(),
            consts,
            states,
        })
    }

    /// The values of the `constexpr_*` operations (decompressed weights),
    /// by output name: what Core ML materializes at load time.
    pub fn constexpr_values(&self) -> Result<Vec<(String, Arr)>> {
        let mut frame =
            Frame { vals: HashMap::new(), states: HashMap::new(), consts: &self.consts, live_consts: HashSet::new() };
        frame.live_consts.extend(self.consts.keys().map(|k| k.as_str()));
        let mut out = Vec::new();
        for op in self.ops.iter().filter(|op| op.r#type.starts_with("constexpr_")) {
            let vals = run_op(op, &frame).map_err(|e| err(format!("{}: {e}", op.r#type)))?;
            for (decl, a) in op.outputs.iter().zip(vals) {
                check_declared(op, decl, &a)?;
                out.push((decl.name.clone(), a));
            }
        }
        Ok(out)
    }

    /// Runs on `inputs` (interface dtypes: fp32 or int32), with states
    /// starting at zero.
    pub fn run(&self, inputs: &[(String, Arr)]) -> Result<Vec<(String, Arr)>> {
        self.run_with_states(inputs, &mut HashMap::new())
    }

    /// The function's state inputs: (name, fp16 shape).
    pub fn states(&self) -> &[(String, Vec<usize>)] {
        &self.states
    }

    /// Runs on `inputs`, reading and updating `states` (by state name;
    /// a state not in the map starts at zero, as a fresh Core ML state).
    pub fn run_with_states(
        &self,
        inputs: &[(String, Arr)],
        states: &mut HashMap<String, Arr>,
    ) -> Result<Vec<(String, Arr)>> {
        let mut frame =
            Frame { vals: HashMap::new(), states: HashMap::new(), consts: &self.consts, live_consts: HashSet::new() };
        for (name, shape) in self.states.iter().cloned() {
            let a = match states.get(&name) {
                Some(a) if a.shape == shape => Arr::f(DataType::Float16, shape, a.floats()?),
                Some(a) => {
                    return Err(Error::Input(format!("state '{name}' must have shape {shape:?}, got {:?}", a.shape)))
                }
                None => {
                    let n = shape.iter().product();
                    Arr::f(DataType::Float16, shape, vec![0.0; n])
                }
            };
            frame.states.insert(name, a);
        }
        for inp in &self.inputs {
            let t = inp.r#type.as_ref().ok_or_else(|| err("input without a type"))?;
            if matches!(t.r#type, Some(value_type::Type::StateType(_))) {
                continue;
            }
            let (dt, shape) = tensor_type(t)?;
            let given = inputs
                .iter()
                .find(|(n, _)| *n == inp.name)
                .map(|(_, a)| a)
                .ok_or_else(|| Error::Input(format!("missing input '{}'", inp.name)))?;
            if given.shape != shape {
                return Err(Error::Input(format!(
                    "input '{}' must have shape {shape:?}, got {:?}",
                    inp.name, given.shape
                )));
            }
            let a = match dt {
                DataType::Int32 => {
                    Arr { dtype: dt, shape, data: Data::I(given.ints()?.iter().map(|&v| v as i32).collect()) }
                }
                DataType::Float32 | DataType::Float16 => Arr::f(dt, shape, given.floats()?),
                other => return Err(err(format!("input type {other:?}"))),
            };
            frame.vals.insert(inp.name.clone(), a);
        }
        for op in &self.ops {
            if op.r#type == "const" {
                frame.live_consts.extend(op.outputs.iter().map(|o| o.name.as_str()));
                continue;
            }
            if op.r#type == "write_state" {
                let (name, old) = state_arg(op, &frame, "input")?;
                let data = req(op, &frame, "data")?;
                if data.dtype != old.dtype || data.shape != old.shape {
                    return Err(err(format!(
                        "write_state '{name}': {:?} {:?} into a state of {:?} {:?}",
                        data.dtype, data.shape, old.dtype, old.shape
                    )));
                }
                if !op.outputs.is_empty() {
                    return Err(err("write_state declares outputs"));
                }
                let (name, data) = (name.to_string(), data.clone());
                frame.states.insert(name, data);
                continue;
            }
            let outs = run_op(op, &frame).map_err(|e| {
                err(format!("{} '{}': {e}", op.r#type, op.outputs.first().map(|o| o.name.as_str()).unwrap_or("?")))
            })?;
            if outs.len() != op.outputs.len() {
                return Err(err(format!(
                    "{} produced {} values for {} declared outputs",
                    op.r#type,
                    outs.len(),
                    op.outputs.len()
                )));
            }
            for (decl, a) in op.outputs.iter().zip(outs) {
                check_declared(op, decl, &a)?;
                frame.vals.insert(decl.name.clone(), a);
            }
        }
        let outs = self
            .outputs
            .iter()
            .map(|o| {
                let a = frame.get(o).cloned().ok_or_else(|| err(format!("output '{o}' is never computed")))?;
                Ok((o.clone(), a))
            })
            .collect::<Result<Vec<_>>>()?;
        states.extend(frame.states);
        Ok(outs)
    }
}

/// Runs function `name` ("main" or a multifunction entry) on `inputs`
/// (values in the function's input order, interface dtypes: fp32 or int32).
pub fn run(pkg: &Package, name: &str, inputs: &[(String, Arr)]) -> Result<Vec<(String, Arr)>> {
    Prepared::new(pkg, name)?.run(inputs)
}
