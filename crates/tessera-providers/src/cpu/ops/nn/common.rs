//! Helpers shared by the nn, quant and fused operators: float dtype
//! dispatch (f16/bf16 compute in f32, f64 in f64), conversions, spatial
//! attribute parsing and window/padding arithmetic.

use std::borrow::Cow;

use half::{bf16, f16};
use tessera_core::dtype::Element;
use tessera_core::{DType, Error, Node, Result, Tensor};
use tessera_kernels::gemm::GemmScalar;

use crate::cpu::registry::RunCtx;

/// A type the float operators compute in: f32 (also for f16/bf16) or f64.
pub(crate) trait Float: GemmScalar + Element {
    /// The data of a float tensor as `Self`, borrowed when the dtype matches.
    fn read(t: &Tensor) -> Result<Cow<'_, [Self]>>;
    /// Stores `vals` into a float tensor of any float dtype.
    fn write(vals: &[Self], out: &mut Tensor) -> Result<()>;
}

macro_rules! float_impl {
    ($t:ty) => {
        impl Float for $t {
            fn read(t: &Tensor) -> Result<Cow<'_, [Self]>> {
                Ok(match t.dtype() {
                    DType::F32 if <$t>::DTYPE == DType::F32 => Cow::Borrowed(t.as_slice::<$t>()?),
                    DType::F64 if <$t>::DTYPE == DType::F64 => Cow::Borrowed(t.as_slice::<$t>()?),
                    DType::F32 => Cow::Owned(t.as_slice::<f32>()?.iter().map(|&v| v as $t).collect()),
                    DType::F64 => Cow::Owned(t.as_slice::<f64>()?.iter().map(|&v| v as $t).collect()),
                    DType::F16 => Cow::Owned(t.as_slice::<f16>()?.iter().map(|&v| v.to_f32() as $t).collect()),
                    DType::BF16 => Cow::Owned(t.as_slice::<bf16>()?.iter().map(|&v| v.to_f32() as $t).collect()),
                    d => return Err(Error::Other(format!("expected a float tensor, got {d}"))),
                })
            }
            fn write(vals: &[Self], out: &mut Tensor) -> Result<()> {
                match out.dtype() {
                    DType::F32 => out.as_mut_slice::<f32>()?.iter_mut().zip(vals).for_each(|(o, &v)| *o = v as f32),
                    DType::F64 => out.as_mut_slice::<f64>()?.iter_mut().zip(vals).for_each(|(o, &v)| *o = v as f64),
                    DType::F16 => {
                        out.as_mut_slice::<f16>()?.iter_mut().zip(vals).for_each(|(o, &v)| *o = f16::from_f32(v as f32))
                    }
                    DType::BF16 => out
                        .as_mut_slice::<bf16>()?
                        .iter_mut()
                        .zip(vals)
                        .for_each(|(o, &v)| *o = bf16::from_f32(v as f32)),
                    d => return Err(Error::Other(format!("expected a float tensor, got {d}"))),
                }
                Ok(())
            }
        }
    };
}
float_impl!(f32);
float_impl!(f64);

/// Runs `$body` with `$T` bound to the compute type of float dtype `$dt`
/// (f64 for f64, f32 for f32/f16/bf16); other dtypes are an error.
macro_rules! with_float {
    ($dt:expr, $node:expr, $T:ident => $body:expr) => {
        match $dt {
            tessera_core::DType::F64 => {
                #[allow(dead_code)]
                type $T = f64;
                $body
            }
            tessera_core::DType::F32 | tessera_core::DType::F16 | tessera_core::DType::BF16 => {
                #[allow(dead_code)]
                type $T = f32;
                $body
            }
            d => Err(tessera_core::Error::node($node, format!("unsupported input type {d}"))),
        }
    };
}
pub(crate) use with_float;

/// Allocates a `dtype` output and lets `f` fill it as `T`, through a
/// temporary when `dtype` is not `T` itself (f16/bf16 outputs).
pub(crate) fn write_output<T: Float>(
    ctx: &mut RunCtx,
    dtype: DType,
    shape: &[usize],
    f: impl FnOnce(&mut [T]) -> Result<()>,
) -> Result<Tensor> {
    let mut out = ctx.alloc(dtype, shape)?;
    if dtype == T::DTYPE {
        f(out.as_mut_slice::<T>()?)?;
    } else {
        let mut tmp = vec![T::ZERO; out.numel()];
        f(&mut tmp)?;
        T::write(&tmp, &mut out)?;
    }
    Ok(out)
}

/// [`write_output`] for an `f` that writes every element: a recycled
/// buffer is handed over as it is, not zeroed first.
pub(crate) fn write_whole_output<T: Float>(
    ctx: &mut RunCtx,
    dtype: DType,
    shape: &[usize],
    f: impl FnOnce(&mut [T]) -> Result<()>,
) -> Result<Tensor> {
    if dtype != T::DTYPE {
        return write_output(ctx, dtype, shape, f);
    }
    let mut out = ctx.alloc_for_overwrite(dtype, shape)?;
    f(out.as_mut_slice::<T>()?)?;
    Ok(out)
}

/// `t` as `T`, using `pre` (values prepared at build time from the same
/// constant, already f32) when it matches.
pub(crate) fn read_or_pre<'a, T: Float>(pre: Option<&'a [f32]>, t: &'a Tensor) -> Result<Cow<'a, [T]>> {
    if let Some(p) = pre {
        if T::DTYPE == DType::F32 && p.len() == t.numel() {
            if let Ok(s) = bytemuck::try_cast_slice::<f32, T>(p) {
                return Ok(Cow::Borrowed(s));
            }
        }
    }
    T::read(t)
}

/// f32 values of a constant f16/bf16 input, prepared once by a builder so
/// that runs do not convert the weights again.
pub(crate) fn widen_const(t: Option<Tensor>) -> Option<std::sync::Arc<Vec<f32>>> {
    let t = t?;
    match t.dtype() {
        DType::F16 | DType::BF16 => Some(std::sync::Arc::new(to_f32_vec(&t))),
        _ => None,
    }
}

/// Checks that `t` has a float dtype.
pub(crate) fn expect_float(node: &Node, t: &Tensor, what: &str) -> Result<()> {
    if !t.dtype().is_float() {
        return Err(Error::node(node, format!("{what} must be a float tensor, got {}", t.dtype())));
    }
    Ok(())
}

/// How a convolution or pooling window is padded.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum AutoPad {
    NotSet,
    SameUpper,
    SameLower,
    Valid,
}

/// The spatial attributes shared by Conv, ConvTranspose and the pools.
#[derive(Clone, Debug)]
pub(crate) struct Spatial {
    pub auto_pad: AutoPad,
    pub kernel_shape: Option<Vec<usize>>,
    pub strides: Option<Vec<usize>>,
    pub dilations: Option<Vec<usize>>,
    /// Explicit pads, `[begin..., end...]`.
    pub pads: Option<Vec<i64>>,
}

fn positive_list(node: &Node, key: &str) -> Result<Option<Vec<usize>>> {
    match node.attr_ints(key)? {
        None => Ok(None),
        Some(v) => v
            .iter()
            .map(|&x| {
                if (1..=(1 << 32)).contains(&x) {
                    Ok(x as usize)
                } else {
                    Err(Error::node(node, format!("attribute '{key}' must hold positive values, got {v:?}")))
                }
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
    }
}

impl Spatial {
    pub fn parse(node: &Node) -> Result<Spatial> {
        let auto_pad = match node.attr_string("auto_pad")?.as_deref() {
            None | Some("NOTSET") | Some("") => AutoPad::NotSet,
            Some("SAME_UPPER") => AutoPad::SameUpper,
            Some("SAME_LOWER") => AutoPad::SameLower,
            Some("VALID") => AutoPad::Valid,
            Some(o) => return Err(Error::node(node, format!("unknown auto_pad '{o}'"))),
        };
        let pads = node.attr_ints("pads")?;
        if let Some(p) = &pads {
            if p.iter().any(|&v| v.abs() > (1 << 32)) {
                return Err(Error::node(node, format!("pads {p:?} out of range")));
            }
        }
        Ok(Spatial {
            auto_pad,
            kernel_shape: positive_list(node, "kernel_shape")?,
            strides: positive_list(node, "strides")?,
            dilations: positive_list(node, "dilations")?,
            pads,
        })
    }

    /// Strides, dilations and explicit pads resolved for `rank` spatial
    /// dimensions (defaults 1, 1 and 0), with their lengths checked.
    pub fn resolve(&self, node: &Node, rank: usize) -> Result<(Vec<usize>, Vec<usize>, Vec<i64>)> {
        let list = |v: &Option<Vec<usize>>, key: &str| -> Result<Vec<usize>> {
            match v {
                None => Ok(vec![1; rank]),
                Some(v) if v.len() == rank => Ok(v.clone()),
                Some(v) => Err(Error::node(node, format!("'{key}' has {} values for {rank} spatial dims", v.len()))),
            }
        };
        let strides = list(&self.strides, "strides")?;
        let dilations = list(&self.dilations, "dilations")?;
        let pads = match &self.pads {
            None => vec![0; 2 * rank],
            Some(p) if p.len() == 2 * rank => p.clone(),
            Some(p) => return Err(Error::node(node, format!("'pads' has {} values for {rank} spatial dims", p.len()))),
        };
        Ok((strides, dilations, pads))
    }
}

/// Output size and leading pad of one spatial dimension of a convolution or
/// pooling window (and its resolved pads). `span` is the dilated kernel
/// extent.
pub(crate) fn window_out(
    auto_pad: AutoPad,
    input: usize,
    span: usize,
    stride: usize,
    pad_begin: i64,
    pad_end: i64,
    ceil_mode: bool,
) -> (usize, i64, i64) {
    let (i, sp, s) = (input as i64, span as i64, stride as i64);
    match auto_pad {
        AutoPad::SameUpper | AutoPad::SameLower => {
            let out = (i + s - 1) / s;
            let total = ((out - 1) * s + sp - i).max(0);
            let (b, e) = if auto_pad == AutoPad::SameUpper {
                (total / 2, total - total / 2)
            } else {
                (total - total / 2, total / 2)
            };
            (out as usize, b, e)
        }
        AutoPad::Valid | AutoPad::NotSet => {
            let (b, e) = if auto_pad == AutoPad::Valid { (0, 0) } else { (pad_begin, pad_end) };
            // floor / ceil of (padded extent - window) / stride, plus one; a
            // window larger than the padded input gives an empty output.
            let padded = i + b + e - sp;
            let mut out = if ceil_mode { -(-padded).div_euclid(s) + 1 } else { padded.div_euclid(s) + 1 };
            // The last window must start inside the input or its leading padding.
            if ceil_mode && out > 0 && (out - 1) * s >= i + b {
                out -= 1;
            }
            let out = out.max(0);
            (out as usize, b, e)
        }
    }
}

/// `[1; 3 - v.len()] ++ v` for the kernels' canonical 3-D form.
pub(crate) fn to3<T: Copy>(v: &[T], fill: T) -> [T; 3] {
    let mut r = [fill; 3];
    let off = 3 - v.len();
    r[off..].copy_from_slice(v);
    r
}

/// The largest number of spatial dimensions the windowed kernels handle.
pub(crate) const MAX_SPATIAL: usize = 3;

/// Reads a tensor of any integer or float type as f32 values.
pub(crate) fn to_f32_vec(t: &Tensor) -> Vec<f32> {
    match t.dtype() {
        DType::F32 => t.as_slice::<f32>().map(|s| s.to_vec()).unwrap_or_default(),
        DType::F16 => t.as_slice::<f16>().map(|s| s.iter().map(|v| v.to_f32()).collect()).unwrap_or_default(),
        DType::BF16 => t.as_slice::<bf16>().map(|s| s.iter().map(|v| v.to_f32()).collect()).unwrap_or_default(),
        _ => t.to_f64_vec().into_iter().map(|v| v as f32).collect(),
    }
}

/// Row-major strides of `shape`.
pub(crate) fn strides_of(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Applies `f(dst_index, src_index)` for every element of `out_shape`, where
/// the source index is `sum(coord[d] * strides[d])` (a strided gather, used
/// for transposes and broadcasts).
pub(crate) fn for_each_strided(out_shape: &[usize], strides: &[usize], mut f: impl FnMut(usize, usize)) {
    let n: usize = out_shape.iter().product();
    if n == 0 {
        return;
    }
    let rank = out_shape.len();
    if rank == 0 {
        f(0, 0);
        return;
    }
    let inner = out_shape[rank - 1];
    let inner_stride = strides[rank - 1];
    let mut counter = vec![0usize; rank];
    let mut base = 0usize;
    let mut dst = 0usize;
    while dst < n {
        for j in 0..inner {
            f(dst + j, base + j * inner_stride);
        }
        dst += inner;
        let mut d = rank - 1;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            counter[d] += 1;
            base += strides[d];
            if counter[d] < out_shape[d] {
                break;
            }
            base -= strides[d] * counter[d];
            counter[d] = 0;
        }
    }
}

/// Copies `src` (laid out so that output coordinate `c` reads
/// `sum(c[d] * strides[d])`) into a new contiguous vector of `out_shape`.
#[cfg(test)]
pub(crate) fn gather_strided<T: Copy + Default>(src: &[T], out_shape: &[usize], strides: &[usize]) -> Vec<T> {
    let n: usize = out_shape.iter().product();
    let mut out = vec![T::default(); n];
    for_each_strided(out_shape, strides, |d, s| out[d] = src[s]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_sizes() {
        // floor / ceil with the last window starting in the padding
        assert_eq!(window_out(AutoPad::NotSet, 4, 3, 2, 0, 0, false), (1, 0, 0));
        assert_eq!(window_out(AutoPad::NotSet, 4, 3, 2, 0, 0, true), (2, 0, 0));
        assert_eq!(window_out(AutoPad::NotSet, 2, 3, 3, 1, 1, true), (1, 1, 1));
        assert_eq!(window_out(AutoPad::SameUpper, 5, 3, 2, 0, 0, false), (3, 1, 1));
        assert_eq!(window_out(AutoPad::SameUpper, 4, 2, 1, 0, 0, false), (4, 0, 1));
        assert_eq!(window_out(AutoPad::SameLower, 4, 2, 1, 0, 0, false), (4, 1, 0));
        assert_eq!(window_out(AutoPad::Valid, 5, 3, 2, 9, 9, false), (2, 0, 0));
        assert_eq!(window_out(AutoPad::NotSet, 2, 5, 1, 0, 0, false), (0, 0, 0));
        assert_eq!(window_out(AutoPad::NotSet, 4, 7, 3, 1, 1, false), (0, 1, 1));
    }

    #[test]
    fn strided_gather_transposes() {
        // 2x3 -> its transpose 3x2
        let src = [1, 2, 3, 4, 5, 6];
        assert_eq!(gather_strided(&src, &[3, 2], &[1, 3]), vec![1, 4, 2, 5, 3, 6]);
        assert_eq!(gather_strided(&src, &[], &[]), vec![1]);
        // broadcast a row
        assert_eq!(gather_strided(&src, &[2, 3], &[0, 1]), vec![1, 2, 3, 1, 2, 3]);
    }
}
