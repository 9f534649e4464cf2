//! Reshape-like views and small tensor factories: Reshape, Flatten, Squeeze,
//! Unsqueeze, Identity, Dropout, Shape, Size, Constant, ConstantOfShape,
//! EyeLike, Range.

use tessera_core::{limits, DType, Error, Node, Result, Tensor};

use super::copy::fill_pattern;
use super::{axes_list, boxed, dim, ints, numel, slim};
use crate::cpu::registry::{BuildCtx, CpuOp, OpRegistry};
use crate::cpu::util::{opt, req};

pub(super) fn register(r: &mut OpRegistry) {
    r.add("Reshape", build_reshape);
    r.add("Flatten", build_flatten);
    r.add("Squeeze", build_squeeze);
    r.add("Unsqueeze", build_unsqueeze);
    r.add("Identity", build_identity);
    r.add("Dropout", build_dropout);
    r.add("Shape", build_shape);
    r.add("Size", build_size);
    r.add("Constant", build_constant);
    r.add("ConstantOfShape", build_constant_of_shape);
    r.add("EyeLike", build_eye_like);
    r.add("Range", build_range);
}

/// Output shape of Reshape for the requested `spec` (0 copies the input
/// dimension unless `allowzero`, one -1 is inferred).
pub(crate) fn reshape_target(node: &Node, in_shape: &[usize], spec: &[i64], allowzero: bool) -> Result<Vec<usize>> {
    let total = numel(node, in_shape)?;
    let mut out = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &d) in spec.iter().enumerate() {
        match d {
            -1 => {
                if infer.is_some() {
                    return Err(Error::node(node, format!("shape {spec:?} has more than one -1")));
                }
                infer = Some(i);
                out.push(1);
            }
            0 if !allowzero => match in_shape.get(i) {
                Some(&v) => out.push(v),
                None => {
                    return Err(Error::node(
                        node,
                        format!(
                            "shape {spec:?} copies dimension {i} (0), but the input {in_shape:?} has no such dimension"
                        ),
                    ))
                }
            },
            d => out.push(dim(node, d, "shape")?),
        }
    }
    if let Some(i) = infer {
        if allowzero && out.contains(&0) {
            return Err(Error::node(node, format!("shape {spec:?} has both -1 and 0 with allowzero=1")));
        }
        let known = out.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let known = known.ok_or_else(|| Error::node(node, format!("shape {spec:?} is too large")))?;
        out[i] = if known == 0 {
            // The input is empty too (checked below); infer from the non-zero dims.
            let a: usize = in_shape.iter().filter(|&&d| d != 0).product();
            let b: usize = out.iter().enumerate().filter(|&(j, &d)| j != i && d != 0).map(|(_, &d)| d).product();
            if b != 0 && a.is_multiple_of(b) {
                a / b
            } else {
                0
            }
        } else {
            if total % known != 0 {
                return Err(Error::node(node, format!("cannot reshape {in_shape:?} to {spec:?}")));
            }
            total / known
        };
    }
    if numel(node, &out)? != total {
        return Err(Error::node(node, format!("cannot reshape {in_shape:?} ({total} elements) to {spec:?}")));
    }
    Ok(out)
}

fn view(node: &Node, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    x.reshape(shape).map_err(|e| Error::node(node, e.to_string()))
}

fn build_reshape(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let n = slim(node);
    let allowzero = node.attr_int_or("allowzero", 0)? != 0;
    let attr_shape = if ctx.opset < 5 {
        Some(node.attr_ints("shape")?.ok_or_else(|| Error::node(node, "missing attribute 'shape'"))?)
    } else {
        None
    };
    boxed(move |inputs, _| {
        let x = req(&n, inputs, 0)?;
        let spec = match &attr_shape {
            Some(s) => s.clone(),
            None => ints(&n, req(&n, inputs, 1)?, "shape")?,
        };
        let shape = reshape_target(&n, x.shape(), &spec, allowzero)?;
        Ok(vec![view(&n, x, &shape)?])
    })
}

fn build_flatten(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let n = slim(node);
    let a = node.attr_int_or("axis", 1)?;
    boxed(move |inputs, _| {
        let x = req(&n, inputs, 0)?;
        let r = x.rank() as i64;
        let ax = if a < 0 { a + r } else { a };
        if ax < 0 || ax > r {
            return Err(Error::node(&n, format!("axis {a} is out of range for a tensor of rank {r}")));
        }
        let (outer, inner) = x.shape().split_at(ax as usize);
        Ok(vec![view(&n, x, &[outer.iter().product(), inner.iter().product()])?])
    })
}

fn build_squeeze(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let n = slim(node);
    let attr_axes = if ctx.opset < 13 { node.attr_ints("axes")? } else { None };
    let from_input = ctx.opset >= 13;
    boxed(move |inputs, _| {
        let x = req(&n, inputs, 0)?;
        let axes = match (&attr_axes, from_input) {
            (Some(a), _) => Some(a.clone()),
            (None, true) => opt(inputs, 1).map(|t| ints(&n, t, "axes")).transpose()?,
            (None, false) => None,
        };
        let shape: Vec<usize> = match axes.filter(|a| !a.is_empty()) {
            None => x.shape().iter().copied().filter(|&d| d != 1).collect(),
            Some(a) => {
                let axes = axes_list(&n, &a, x.rank())?;
                for &ax in &axes {
                    if x.shape()[ax] != 1 {
                        return Err(Error::node(
                            &n,
                            format!("cannot squeeze axis {ax} of shape {:?}: its size is not 1", x.shape()),
                        ));
                    }
                }
                x.shape().iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, &d)| d).collect()
            }
        };
        Ok(vec![view(&n, x, &shape)?])
    })
}

fn build_unsqueeze(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let n = slim(node);
    let attr_axes = if ctx.opset < 13 {
        Some(node.attr_ints("axes")?.ok_or_else(|| Error::node(node, "missing attribute 'axes'"))?)
    } else {
        None
    };
    boxed(move |inputs, _| {
        let x = req(&n, inputs, 0)?;
        let a = match &attr_axes {
            Some(a) => a.clone(),
            None => ints(&n, req(&n, inputs, 1)?, "axes")?,
        };
        let out_rank = x.rank() + a.len();
        if out_rank > tessera_core::limits::MAX_RANK {
            return Err(Error::node(&n, format!("output rank {out_rank} is too large")));
        }
        let axes = axes_list(&n, &a, out_rank)?;
        let mut src = x.shape().iter();
        let shape: Vec<usize> =
            (0..out_rank).map(|i| if axes.contains(&i) { 1 } else { src.next().copied().unwrap_or(1) }).collect();
        Ok(vec![view(&n, x, &shape)?])
    })
}

fn build_identity(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let n = slim(node);
    boxed(move |inputs, _| Ok(vec![req(&n, inputs, 0)?.clone()]))
}

/// numpy's legacy MT19937 generator (`np.random.seed(s)` then
/// `np.random.uniform(0, 1)`), so that training-mode Dropout with a seed
/// reproduces the reference masks.
struct Mt19937 {
    mt: [u32; 624],
    idx: usize,
}

impl Mt19937 {
    fn new(seed: u32) -> Self {
        let mut mt = [0u32; 624];
        mt[0] = seed;
        for i in 1..624 {
            mt[i] = 1812433253u32.wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30)).wrapping_add(i as u32);
        }
        Mt19937 { mt, idx: 624 }
    }

    fn next_u32(&mut self) -> u32 {
        if self.idx >= 624 {
            for i in 0..624 {
                let y = (self.mt[i] & 0x8000_0000) | (self.mt[(i + 1) % 624] & 0x7fff_ffff);
                let mut v = self.mt[(i + 397) % 624] ^ (y >> 1);
                if y & 1 != 0 {
                    v ^= 0x9908_b0df;
                }
                self.mt[i] = v;
            }
            self.idx = 0;
        }
        let mut y = self.mt[self.idx];
        self.idx += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    fn next_f64(&mut self) -> f64 {
        let a = (self.next_u32() >> 5) as f64;
        let b = (self.next_u32() >> 6) as f64;
        (a * 67108864.0 + b) / 9007199254740992.0
    }
}

fn build_dropout(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let n = slim(node);
    let opset = ctx.opset;
    let want_mask = node.outputs.get(1).is_some_and(|s| !s.is_empty());
    let seed = node.attr_int("seed")?;
    boxed(move |inputs, c| {
        let x = req(&n, inputs, 0)?;
        // Training mode exists from opset 12 (input 2); before, Dropout is
        // the identity at inference.
        let training = opset >= 12
            && match opt(inputs, 2) {
                Some(t) if t.numel() > 0 => super::nonzero_elem(t.dtype(), &t.bytes()[..t.dtype().size()]),
                _ => false,
            };
        let ratio = match opt(inputs, 1) {
            Some(t) if opset >= 12 && t.numel() > 0 => t.to_f64_vec()[0],
            _ => 0.5,
        };
        let mask_dtype = if opset < 10 { x.dtype() } else { DType::Bool };
        if !training || ratio == 0.0 {
            let mut out = vec![x.clone()];
            if want_mask {
                let mut m = c.alloc(mask_dtype, x.shape())?;
                let one = Tensor::from_f64(mask_dtype, &[], &[1.0])?;
                fill_pattern(m.bytes_mut(), one.bytes());
                out.push(m);
            }
            return Ok(out);
        }
        if !(0.0..1.0).contains(&ratio) {
            return Err(Error::node(&n, format!("ratio must be in [0, 1) in training mode, got {ratio}")));
        }
        if !x.dtype().is_float() {
            return Err(Error::node(&n, format!("training-mode Dropout needs a float input, got {}", x.dtype())));
        }
        let seed = match seed {
            Some(s) => s as u32,
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos() ^ d.as_secs() as u32)
                .unwrap_or(0),
        };
        let mut rng = Mt19937::new(seed);
        let keep: Vec<bool> = (0..x.numel()).map(|_| rng.next_f64() >= ratio).collect();
        let scale = 1.0 / (1.0 - ratio);
        let y: Vec<f64> = x.to_f64_vec().iter().zip(&keep).map(|(&v, &k)| if k { v * scale } else { 0.0 }).collect();
        let mut out = vec![Tensor::from_f64(x.dtype(), x.shape(), &y)?];
        if want_mask {
            let m: Vec<f64> = keep.iter().map(|&k| k as u8 as f64).collect();
            out.push(Tensor::from_f64(DType::Bool, x.shape(), &m)?);
        }
        Ok(out)
    })
}

fn build_shape(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let n = slim(node);
    let start = node.attr_int_or("start", 0)?;
    let end = node.attr_int("end")?;
    boxed(move |inputs, _| {
        let x = req(&n, inputs, 0)?;
        let r = x.rank() as i64;
        let clamp = |v: i64| if v < 0 { (v + r).max(0) } else { v.min(r) };
        let (s, e) = (clamp(start), clamp(end.unwrap_or(r)));
        let dims: Vec<i64> =
            if s < e { x.shape()[s as usize..e as usize].iter().map(|&d| d as i64).collect() } else { vec![] };
        Ok(vec![Tensor::from_vec(&[dims.len()], dims)?])
    })
}

fn build_size(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let n = slim(node);
    boxed(move |inputs, _| Ok(vec![Tensor::scalar(req(&n, inputs, 0)?.numel() as i64)]))
}

fn build_constant(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let t = if node.attrs.contains_key("sparse_value") {
        return Err(Error::Unsupported(format!("Constant node '{}' with a sparse_value", node.name)));
    } else if node.attrs.contains_key("value_string") || node.attrs.contains_key("value_strings") {
        return Err(Error::Unsupported(format!("Constant node '{}' with a string value", node.name)));
    } else if let Some(t) = node.attr_tensor("value")? {
        t.clone()
    } else if let Some(v) = node.attr_float("value_float")? {
        Tensor::scalar(v)
    } else if let Some(v) = node.attr_floats("value_floats")? {
        Tensor::from_slice(&[v.len()], &v)?
    } else if let Some(v) = node.attr_int("value_int")? {
        Tensor::scalar(v)
    } else if let Some(v) = node.attr_ints("value_ints")? {
        Tensor::from_slice(&[v.len()], &v)?
    } else {
        return Err(Error::node(node, "Constant has no value attribute"));
    };
    boxed(move |_, _| Ok(vec![t.clone()]))
}

fn build_constant_of_shape(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let n = slim(node);
    let value = match node.attr_tensor("value")? {
        Some(t) if t.numel() == 1 => t.clone(),
        Some(t) => return Err(Error::node(node, format!("value must have one element, got shape {:?}", t.shape()))),
        None => Tensor::scalar(0f32),
    };
    boxed(move |inputs, c| {
        let spec = ints(&n, req(&n, inputs, 0)?, "shape")?;
        let shape = spec.iter().map(|&d| dim(&n, d, "shape")).collect::<Result<Vec<_>>>()?;
        numel(&n, &shape)?;
        let mut out = c.alloc(value.dtype(), &shape)?;
        fill_pattern(out.bytes_mut(), value.bytes());
        Ok(vec![out])
    })
}

fn build_eye_like(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let n = slim(node);
    let dtype = node
        .attr_int("dtype")?
        .map(|c| DType::from_onnx(c as i32).map_err(|e| Error::node(node, e.to_string())))
        .transpose()?;
    let k = node.attr_int_or("k", 0)?;
    boxed(move |inputs, c| {
        let x = req(&n, inputs, 0)?;
        let (rows, cols) = match *x.shape() {
            [r, c] => (r, c),
            [r] => (r, r),
            _ => return Err(Error::node(&n, format!("input must be 2-D, got shape {:?}", x.shape()))),
        };
        let dt = dtype.unwrap_or(x.dtype());
        numel(&n, &[rows, cols])?;
        let mut out = c.alloc(dt, &[rows, cols])?;
        let one = Tensor::from_f64(dt, &[], &[1.0])?;
        let es = dt.size();
        let b = out.bytes_mut();
        for i in 0..rows {
            let j = i as i128 + k as i128;
            if (0..cols as i128).contains(&j) {
                let o = (i * cols + j as usize) * es;
                b[o..o + es].copy_from_slice(one.bytes());
            }
        }
        Ok(vec![out])
    })
}

/// Fills `out` (a 1-D tensor of any numeric dtype) with `f(i)`: integer
/// dtypes take `f`'s i128 values exactly, float dtypes the f64 ones.
fn fill_range(out: &mut Tensor, int: impl Fn(usize) -> i128, float: impl Fn(usize) -> f64) -> Result<()> {
    macro_rules! ints {
        ($t:ty) => {
            out.as_mut_slice::<$t>()?.iter_mut().enumerate().for_each(|(i, v)| *v = int(i) as $t)
        };
    }
    macro_rules! floats {
        ($t:ty, $conv:expr) => {
            out.as_mut_slice::<$t>()?.iter_mut().enumerate().for_each(|(i, v)| *v = $conv(float(i)))
        };
    }
    match out.dtype() {
        DType::I64 => ints!(i64),
        DType::I32 => ints!(i32),
        DType::I16 => ints!(i16),
        DType::I8 => ints!(i8),
        DType::U8 => ints!(u8),
        DType::U16 => ints!(u16),
        DType::U32 => ints!(u32),
        DType::U64 => ints!(u64),
        DType::F32 => floats!(f32, |v: f64| v as f32),
        DType::F64 => floats!(f64, |v: f64| v),
        DType::F16 => floats!(half::f16, half::f16::from_f64),
        DType::BF16 => floats!(half::bf16, half::bf16::from_f64),
        d => return Err(Error::Other(format!("Range does not support {d}"))),
    }
    Ok(())
}

fn build_range(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let n = slim(node);
    boxed(move |inputs, c| {
        let (s, l, d) = (req(&n, inputs, 0)?, req(&n, inputs, 1)?, req(&n, inputs, 2)?);
        for (t, what) in [(s, "start"), (l, "limit"), (d, "delta")] {
            if t.numel() != 1 {
                return Err(Error::node(&n, format!("{what} must be a scalar, got shape {:?}", t.shape())));
            }
            if t.dtype() != s.dtype() {
                return Err(Error::node(&n, format!("{what} is {}, but start is {}", t.dtype(), s.dtype())));
            }
        }
        let dt = s.dtype();
        if dt.is_int() {
            let get = |t: &Tensor| -> Result<i128> {
                Ok(match dt {
                    DType::U64 => bytemuck::pod_read_unaligned::<u64>(&t.bytes()[..8]) as i128,
                    _ => ints(&n, t, "range bound")?[0] as i128,
                })
            };
            let (start, limit, delta) = (get(s)?, get(l)?, get(d)?);
            if delta == 0 {
                return Err(Error::node(&n, "delta must not be zero"));
            }
            let count = if delta > 0 {
                if limit > start {
                    (limit - start + delta - 1) / delta
                } else {
                    0
                }
            } else if limit < start {
                (start - limit - delta - 1) / -delta
            } else {
                0
            };
            if count as u64 > limits::MAX_ELEMENTS {
                return Err(Error::node(&n, format!("Range would produce {count} elements")));
            }
            let mut out = c.alloc(dt, &[count as usize])?;
            fill_range(&mut out, |i| start + i as i128 * delta, |_| 0.0)?;
            return Ok(vec![out]);
        }
        if !dt.is_float() {
            return Err(Error::node(&n, format!("Range does not support {dt}")));
        }
        let (start, limit, delta) = (s.to_f64_vec()[0], l.to_f64_vec()[0], d.to_f64_vec()[0]);
        if delta == 0.0 || !start.is_finite() || !limit.is_finite() || !delta.is_finite() {
            return Err(Error::node(&n, format!("invalid range start={start} limit={limit} delta={delta}")));
        }
        let count = ((limit - start) / delta).ceil().max(0.0);
        if count > limits::MAX_ELEMENTS as f64 {
            return Err(Error::node(&n, format!("Range would produce {count} elements")));
        }
        let mut out = c.alloc(dt, &[count as usize])?;
        fill_range(&mut out, |_| 0, |i| start + i as f64 * delta)?;
        Ok(vec![out])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_matches_numpy() {
        // np.random.seed(0); np.random.uniform(0, 1, 3)
        let mut r = Mt19937::new(0);
        let v: Vec<f64> = (0..3).map(|_| r.next_f64()).collect();
        let want = [0.5488135039273248, 0.7151893663724195, 0.6027633760716439];
        for (a, b) in v.iter().zip(want) {
            assert!((a - b).abs() < 1e-15, "{v:?}");
        }
    }

    #[test]
    fn reshape_targets() {
        let n = Node::new("Reshape", "r", &[], &[]);
        assert_eq!(reshape_target(&n, &[2, 3, 4], &[0, -1], false).unwrap(), vec![2, 12]);
        assert_eq!(reshape_target(&n, &[2, 3, 4], &[-1, 0, 2], false).unwrap(), vec![4, 3, 2]);
        assert_eq!(reshape_target(&n, &[0, 3, 4], &[3, 4, 0], true).unwrap(), vec![3, 4, 0]);
        assert_eq!(reshape_target(&n, &[0, 3, 4], &[0, -1], false).unwrap(), vec![0, 12]);
        assert!(reshape_target(&n, &[2, 3, 4], &[-1, -1], false).is_err());
        assert!(reshape_target(&n, &[2, 3, 4], &[5, -1], false).is_err());
        assert!(reshape_target(&n, &[2, 3], &[0, 0, 0], false).is_err());
        assert!(reshape_target(&n, &[2, 3], &[-2, 3], false).is_err());
        assert!(reshape_target(&n, &[2, 3], &[i64::MAX, i64::MAX], false).is_err());
    }
}
