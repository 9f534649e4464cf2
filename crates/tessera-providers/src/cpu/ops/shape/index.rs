//! Indexing operators: Gather, GatherElements, GatherND, ScatterND,
//! ScatterElements (and the deprecated Scatter), OneHot, NonZero, Compress,
//! ReverseSequence, Trilu.

use bytemuck::Pod;
use tessera_core::{DType, Error, Node, Result, Tensor};

use super::copy::{fill_pattern, gather_copy, gather_elements, Src};
use super::{axis, boxed, index, ints, nonzero_elem, numel, scalar_i64, slim, strides};
use crate::cpu::registry::{BuildCtx, CpuOp, OpRegistry};
use crate::cpu::util::{opt, req};

pub(super) fn register(r: &mut OpRegistry) {
    r.add("Gather", build_gather);
    r.add("GatherElements", build_gather_elements);
    r.add("GatherND", build_gather_nd);
    r.add("ScatterND", build_scatter_nd);
    r.add("ScatterElements", build_scatter_elements);
    r.add("Scatter", build_scatter_elements);
    r.add("OneHot", build_one_hot);
    r.add("NonZero", build_non_zero);
    r.add("Compress", build_compress);
    r.add("ReverseSequence", build_reverse_sequence);
    r.add("Trilu", build_trilu);
}

fn build_gather(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let n = slim(node);
    let a = node.attr_int_or("axis", 0)?;
    boxed(move |inputs, c| {
        let x = req(&n, inputs, 0)?;
        let idx = req(&n, inputs, 1)?;
        if x.rank() == 0 {
            return Err(Error::node(&n, "cannot gather from a scalar"));
        }
        let ax = axis(&n, a, x.rank())?;
        let nd = x.shape()[ax];
        let inner: usize = x.shape()[ax + 1..].iter().product();
        let table = ints(&n, idx, "indices")?
            .into_iter()
            .map(|i| Ok(index(&n, i, nd, "index")? * inner))
            .collect::<Result<Vec<_>>>()?;
        let mut out_shape = x.shape()[..ax].to_vec();
        out_shape.extend_from_slice(idx.shape());
        out_shape.extend_from_slice(&x.shape()[ax + 1..]);
        numel(&n, &out_shape)?;
        let outer: usize = x.shape()[..ax].iter().product();
        let view = [outer, table.len(), inner];
        let maps = vec![Src::step(nd * inner), Src::Table(table), Src::step(1)];
        let mut out = c.alloc(x.dtype(), &out_shape)?;
        gather_copy(out.bytes_mut(), x.bytes(), x.dtype().size(), &view, maps)?;
        Ok(vec![out])
    })
}

/// Element offsets into `data` for GatherElements/ScatterElements: for every
/// element of `indices` (row-major), its position with the `ax` coordinate
/// replaced by the index value.
fn element_offsets(node: &Node, data: &[usize], idx_shape: &[usize], idx: &[i64], ax: usize) -> Result<Vec<usize>> {
    if idx_shape.len() != data.len() {
        return Err(Error::node(node, format!("indices {idx_shape:?} must have the rank of the data {data:?}")));
    }
    for d in 0..data.len() {
        if d != ax && idx_shape[d] > data[d] {
            return Err(Error::node(node, format!("indices shape {idx_shape:?} exceeds the data shape {data:?}")));
        }
    }
    let st = strides(data);
    let rank = data.len();
    let mut coord = vec![0usize; rank];
    let mut base = 0usize; // offset of `coord` without the axis term
    let mut out = Vec::with_capacity(idx.len());
    for &v in idx {
        out.push(base + index(node, v, data[ax], "index")? * st[ax]);
        for d in (0..rank).rev() {
            coord[d] += 1;
            if d != ax {
                base += st[d];
            }
            if coord[d] < idx_shape[d] {
                break;
            }
            if d != ax {
                base -= st[d] * coord[d];
            }
            coord[d] = 0;
        }
    }
    Ok(out)
}

fn build_gather_elements(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let n = slim(node);
    let a = node.attr_int_or("axis", 0)?;
    boxed(move |inputs, c| {
        let x = req(&n, inputs, 0)?;
        let idx = req(&n, inputs, 1)?;
        let ax = axis(&n, a, x.rank())?;
        let offs = element_offsets(&n, x.shape(), idx.shape(), &ints(&n, idx, "indices")?, ax)?;
        let mut out = c.alloc(x.dtype(), idx.shape())?;
        gather_elements(out.bytes_mut(), x.bytes(), x.dtype().size(), &offs)?;
        Ok(vec![out])
    })
}

/// Shared GatherND/ScatterND index resolution: for each index tuple, the
/// element offset of the addressed slice, plus the slice size.
struct NdIndex {
    offsets: Vec<usize>,
    slice: usize,
}

fn nd_offsets(node: &Node, data: &[usize], idx_shape: &[usize], idx: &[i64], batch_dims: usize) -> Result<NdIndex> {
    let (r, q) = (data.len(), idx_shape.len());
    if q == 0 || r == 0 {
        return Err(Error::node(node, "data and indices must have rank >= 1"));
    }
    let k = idx_shape[q - 1];
    if batch_dims >= q.min(r) || k > r - batch_dims {
        return Err(Error::node(
            node,
            format!("indices {idx_shape:?} with batch_dims={batch_dims} do not fit data of shape {data:?}"),
        ));
    }
    if data[..batch_dims] != idx_shape[..batch_dims] {
        return Err(Error::node(node, format!("batch dimensions of data {data:?} and indices {idx_shape:?} differ")));
    }
    let st = strides(data);
    let slice: usize = data[batch_dims + k..].iter().product();
    let bstride: usize = data[batch_dims..].iter().product();
    let tuples: usize = idx_shape[batch_dims..q - 1].iter().product();
    let ntuples = idx.len().checked_div(k).unwrap_or_else(|| idx_shape[..q - 1].iter().product());
    let mut offsets = Vec::with_capacity(ntuples);
    for t in 0..ntuples {
        let b = t.checked_div(tuples).unwrap_or(0);
        let mut off = b * bstride;
        for j in 0..k {
            let d = batch_dims + j;
            off += index(node, idx[t * k + j], data[d], "index")? * st[d];
        }
        offsets.push(off);
    }
    Ok(NdIndex { offsets, slice })
}

fn build_gather_nd(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let n = slim(node);
    let b = node.attr_int_or("batch_dims", 0)?;
    if b < 0 {
        return Err(Error::node(node, format!("batch_dims must be non-negative, got {b}")));
    }
    boxed(move |inputs, c| {
        let x = req(&n, inputs, 0)?;
        let idx = req(&n, inputs, 1)?;
        let nd = nd_offsets(&n, x.shape(), idx.shape(), &ints(&n, idx, "indices")?, b as usize)?;
        let q = idx.rank();
        let k = idx.shape()[q - 1];
        let mut out_shape = idx.shape()[..q - 1].to_vec();
        out_shape.extend_from_slice(&x.shape()[b as usize + k..]);
        numel(&n, &out_shape)?;
        let view = [nd.offsets.len(), nd.slice];
        let mut out = c.alloc(x.dtype(), &out_shape)?;
        gather_copy(out.bytes_mut(), x.bytes(), x.dtype().size(), &view, vec![Src::Table(nd.offsets), Src::step(1)])?;
        Ok(vec![out])
    })
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Reduction {
    None,
    Add,
    Mul,
    Max,
    Min,
}

fn reduction(node: &Node) -> Result<Reduction> {
    Ok(match node.attr_string("reduction")?.as_deref().unwrap_or("none") {
        "none" => Reduction::None,
        "add" => Reduction::Add,
        "mul" => Reduction::Mul,
        "max" => Reduction::Max,
        "min" => Reduction::Min,
        r => return Err(Error::node(node, format!("unknown reduction '{r}'"))),
    })
}

/// Element arithmetic for scatter reductions.
trait Reduce: Pod {
    fn add(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    fn max(self, o: Self) -> Self;
    fn min(self, o: Self) -> Self;
}

macro_rules! reduce_int {
    ($($t:ty),*) => {$(
        impl Reduce for $t {
            fn add(self, o: Self) -> Self { self.wrapping_add(o) }
            fn mul(self, o: Self) -> Self { self.wrapping_mul(o) }
            fn max(self, o: Self) -> Self { Ord::max(self, o) }
            fn min(self, o: Self) -> Self { Ord::min(self, o) }
        }
    )*};
}
reduce_int!(i8, u8, i16, u16, i32, u32, i64, u64);

macro_rules! reduce_float {
    ($($t:ty),*) => {$(
        impl Reduce for $t {
            fn add(self, o: Self) -> Self { self + o }
            fn mul(self, o: Self) -> Self { self * o }
            fn max(self, o: Self) -> Self { if o > self { o } else { self } }
            fn min(self, o: Self) -> Self { if o < self { o } else { self } }
        }
    )*};
}
reduce_float!(f32, f64);

macro_rules! reduce_half {
    ($($t:ty),*) => {$(
        impl Reduce for $t {
            fn add(self, o: Self) -> Self { <$t>::from_f32(self.to_f32() + o.to_f32()) }
            fn mul(self, o: Self) -> Self { <$t>::from_f32(self.to_f32() * o.to_f32()) }
            fn max(self, o: Self) -> Self { if o > self { o } else { self } }
            fn min(self, o: Self) -> Self { if o < self { o } else { self } }
        }
    )*};
}
reduce_half!(half::f16, half::bf16);

/// Applies `out[d + i] = red(out[d + i], upd[u + i])` for each run `(d, u)`
/// of `len` elements.
fn apply_runs(out: &mut Tensor, upd: &Tensor, runs: &[(usize, usize)], len: usize, red: Reduction) -> Result<()> {
    let dtype = out.dtype();
    let es = dtype.size();
    if red == Reduction::None {
        let (o, u) = (out.bytes_mut(), upd.bytes());
        for &(d, s) in runs {
            o[d * es..(d + len) * es].copy_from_slice(&u[s * es..(s + len) * es]);
        }
        return Ok(());
    }
    fn go<T: Reduce>(
        out: &mut Tensor,
        upd: &Tensor,
        runs: &[(usize, usize)],
        len: usize,
        red: Reduction,
    ) -> Result<()> {
        let u: Vec<T> = bytemuck::pod_collect_to_vec(upd.bytes());
        let o: &mut [T] = bytemuck::try_cast_slice_mut(out.bytes_mut())
            .map_err(|_| Error::Other("misaligned scatter output".into()))?;
        let f: fn(T, T) -> T = match red {
            Reduction::Add => T::add,
            Reduction::Mul => T::mul,
            Reduction::Max => T::max,
            Reduction::Min | Reduction::None => T::min,
        };
        for &(d, s) in runs {
            for i in 0..len {
                o[d + i] = f(o[d + i], u[s + i]);
            }
        }
        Ok(())
    }
    match dtype {
        DType::F32 => go::<f32>(out, upd, runs, len, red),
        DType::F64 => go::<f64>(out, upd, runs, len, red),
        DType::F16 => go::<half::f16>(out, upd, runs, len, red),
        DType::BF16 => go::<half::bf16>(out, upd, runs, len, red),
        DType::I8 => go::<i8>(out, upd, runs, len, red),
        DType::U8 => go::<u8>(out, upd, runs, len, red),
        DType::I16 => go::<i16>(out, upd, runs, len, red),
        DType::U16 => go::<u16>(out, upd, runs, len, red),
        DType::I32 => go::<i32>(out, upd, runs, len, red),
        DType::U32 => go::<u32>(out, upd, runs, len, red),
        DType::I64 => go::<i64>(out, upd, runs, len, red),
        DType::U64 => go::<u64>(out, upd, runs, len, red),
        // On 0/1 values, max is "or" and min is "and".
        DType::Bool => {
            let r = if matches!(red, Reduction::Add | Reduction::Max) { Reduction::Max } else { Reduction::Min };
            go::<u8>(out, upd, runs, len, r)
        }
    }
}

/// The output of a scatter: a private copy of `data`.
fn scatter_base(c: &mut crate::cpu::registry::RunCtx, x: &Tensor) -> Result<Tensor> {
    let mut out = c.alloc(x.dtype(), x.shape())?;
    out.bytes_mut().copy_from_slice(x.bytes());
    Ok(out)
}

fn build_scatter_nd(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let n = slim(node);
    let red = reduction(node)?;
    boxed(move |inputs, c| {
        let x = req(&n, inputs, 0)?;
        let idx = req(&n, inputs, 1)?;
        let upd = req(&n, inputs, 2)?;
        let nd = nd_offsets(&n, x.shape(), idx.shape(), &ints(&n, idx, "indices")?, 0)?;
        let q = idx.rank();
        let mut want = idx.shape()[..q - 1].to_vec();
        want.extend_from_slice(&x.shape()[idx.shape()[q - 1]..]);
        if upd.shape() != want.as_slice() || upd.dtype() != x.dtype() {
            return Err(Error::node(
                &n,
                format!("updates must be {} of shape {want:?}, got {} {:?}", x.dtype(), upd.dtype(), upd.shape()),
            ));
        }
        let runs: Vec<(usize, usize)> = nd.offsets.iter().enumerate().map(|(t, &d)| (d, t * nd.slice)).collect();
        let mut out = scatter_base(c, x)?;
        apply_runs(&mut out, upd, &runs, nd.slice, red)?;
        Ok(vec![out])
    })
}

fn build_scatter_elements(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let n = slim(node);
    let red = reduction(node)?;
    let a = node.attr_int_or("axis", 0)?;
    boxed(move |inputs, c| {
        let x = req(&n, inputs, 0)?;
        let idx = req(&n, inputs, 1)?;
        let upd = req(&n, inputs, 2)?;
        if upd.shape() != idx.shape() || upd.dtype() != x.dtype() {
            return Err(Error::node(
                &n,
                format!(
                    "updates must be {} of the indices' shape {:?}, got {} {:?}",
                    x.dtype(),
                    idx.shape(),
                    upd.dtype(),
                    upd.shape()
                ),
            ));
        }
        let ax = axis(&n, a, x.rank())?;
        let offs = element_offsets(&n, x.shape(), idx.shape(), &ints(&n, idx, "indices")?, ax)?;
        let runs: Vec<(usize, usize)> = offs.into_iter().enumerate().map(|(u, d)| (d, u)).collect();
        let mut out = scatter_base(c, x)?;
        apply_runs(&mut out, upd, &runs, 1, red)?;
        Ok(vec![out])
    })
}

fn build_one_hot(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let n = slim(node);
    let a = node.attr_int_or("axis", -1)?;
    boxed(move |inputs, c| {
        let idx = req(&n, inputs, 0)?;
        let depth = scalar_i64(&n, req(&n, inputs, 1)?, "depth")?;
        let values = req(&n, inputs, 2)?;
        if depth <= 0 {
            return Err(Error::node(&n, format!("depth must be positive, got {depth}")));
        }
        if values.numel() != 2 {
            return Err(Error::node(&n, format!("values must hold [off, on], got shape {:?}", values.shape())));
        }
        let r = idx.rank();
        let ax = axis(&n, a, r + 1)?;
        let depth_u = super::dim(&n, depth, "depth")?;
        let mut out_shape = idx.shape().to_vec();
        out_shape.insert(ax, depth_u);
        numel(&n, &out_shape)?;
        let ids: Vec<i64> = if idx.dtype().is_float() {
            idx.to_f64_vec().into_iter().map(|v| if v.is_finite() { v as i64 } else { i64::MIN }).collect()
        } else {
            ints(&n, idx, "indices")?
        };
        let dt = values.dtype();
        let es = dt.size();
        let (off, on) = values.bytes().split_at(es);
        let mut out = c.alloc(dt, &out_shape)?;
        let b = out.bytes_mut();
        fill_pattern(b, off);
        let inner: usize = idx.shape()[ax..].iter().product();
        for (p, &v) in ids.iter().enumerate() {
            let v = if v < 0 { v.saturating_add(depth) } else { v };
            if (0..depth).contains(&v) {
                let (o, i) = (p / inner.max(1), p % inner.max(1));
                let at = ((o * depth_u + v as usize) * inner + i) * es;
                b[at..at + es].copy_from_slice(on);
            }
        }
        Ok(vec![out])
    })
}

fn build_non_zero(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let n = slim(node);
    boxed(move |inputs, _| {
        let x = req(&n, inputs, 0)?;
        let es = x.dtype().size();
        let hits: Vec<usize> = x
            .bytes()
            .chunks_exact(es)
            .enumerate()
            .filter(|(_, e)| nonzero_elem(x.dtype(), e))
            .map(|(i, _)| i)
            .collect();
        let nz = hits.len();
        if x.rank() == 0 {
            return Ok(vec![Tensor::from_vec(&[1, nz], vec![0i64; nz])?]);
        }
        let r = x.rank();
        let mut out = vec![0i64; r * nz];
        for (j, &h) in hits.iter().enumerate() {
            let mut rem = h;
            for d in (0..r).rev() {
                out[d * nz + j] = (rem % x.shape()[d]) as i64;
                rem /= x.shape()[d];
            }
        }
        Ok(vec![Tensor::from_vec(&[r, nz], out)?])
    })
}

fn build_compress(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let n = slim(node);
    let a = node.attr_int("axis")?;
    boxed(move |inputs, c| {
        let x = req(&n, inputs, 0)?;
        let cond = req(&n, inputs, 1)?;
        if cond.rank() > 1 {
            return Err(Error::node(&n, format!("condition must be 1-D, got shape {:?}", cond.shape())));
        }
        let ces = cond.dtype().size();
        let flags: Vec<bool> = cond.bytes().chunks_exact(ces).map(|e| nonzero_elem(cond.dtype(), e)).collect();
        let (shape, ax) = match a {
            Some(a) => (x.shape().to_vec(), axis(&n, a, x.rank())?),
            None => (vec![x.numel()], 0),
        };
        let d = shape[ax];
        if flags.iter().skip(d).any(|&f| f) {
            return Err(Error::node(&n, format!("condition selects entries beyond the axis size {d}")));
        }
        let inner: usize = shape[ax + 1..].iter().product();
        let outer: usize = shape[..ax].iter().product();
        let sel: Vec<usize> = flags.iter().take(d).enumerate().filter(|(_, &f)| f).map(|(i, _)| i * inner).collect();
        let mut out_shape = shape.clone();
        out_shape[ax] = sel.len();
        let view = [outer, sel.len(), inner];
        let mut out = c.alloc(x.dtype(), &out_shape)?;
        gather_copy(
            out.bytes_mut(),
            x.bytes(),
            x.dtype().size(),
            &view,
            vec![Src::step(d * inner), Src::Table(sel), Src::step(1)],
        )?;
        Ok(vec![out])
    })
}

fn build_reverse_sequence(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let n = slim(node);
    let batch_axis = node.attr_int_or("batch_axis", 1)?;
    let time_axis = node.attr_int_or("time_axis", 0)?;
    if !matches!((batch_axis, time_axis), (0, 1) | (1, 0)) {
        return Err(Error::node(
            node,
            format!("batch_axis ({batch_axis}) and time_axis ({time_axis}) must be 0 and 1 in some order"),
        ));
    }
    boxed(move |inputs, c| {
        let x = req(&n, inputs, 0)?;
        let lens = ints(&n, req(&n, inputs, 1)?, "sequence_lens")?;
        if x.rank() < 2 {
            return Err(Error::node(&n, format!("input must have rank >= 2, got shape {:?}", x.shape())));
        }
        let (d0, d1) = (x.shape()[0], x.shape()[1]);
        let (nb, nt) = if batch_axis == 0 { (d0, d1) } else { (d1, d0) };
        if lens.len() != nb {
            return Err(Error::node(&n, format!("sequence_lens has {} entries for a batch of {nb}", lens.len())));
        }
        if let Some(&l) = lens.iter().find(|&&l| l < 0 || l as usize > nt) {
            return Err(Error::node(&n, format!("sequence length {l} is outside [0, {nt}]")));
        }
        let inner: usize = x.shape()[2..].iter().product();
        let mut table = Vec::with_capacity(d0 * d1);
        for i0 in 0..d0 {
            for i1 in 0..d1 {
                let (b, t) = if batch_axis == 0 { (i0, i1) } else { (i1, i0) };
                let l = lens[b] as usize;
                let st = if t < l { l - 1 - t } else { t };
                let (s0, s1) = if batch_axis == 0 { (b, st) } else { (st, b) };
                table.push((s0 * d1 + s1) * inner);
            }
        }
        let mut out = c.alloc(x.dtype(), x.shape())?;
        gather_copy(
            out.bytes_mut(),
            x.bytes(),
            x.dtype().size(),
            &[d0 * d1, inner],
            vec![Src::Table(table), Src::step(1)],
        )?;
        Ok(vec![out])
    })
}

fn build_trilu(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let n = slim(node);
    let upper = node.attr_int_or("upper", 1)? != 0;
    boxed(move |inputs, c| {
        let x = req(&n, inputs, 0)?;
        let k = match opt(inputs, 1) {
            Some(t) => scalar_i64(&n, t, "k")?,
            None => 0,
        };
        let r = x.rank();
        if r < 2 {
            return Err(Error::node(&n, format!("input must have rank >= 2, got shape {:?}", x.shape())));
        }
        let (rows, cols) = (x.shape()[r - 2], x.shape()[r - 1]);
        let es = x.dtype().size();
        let mut out = c.alloc(x.dtype(), x.shape())?;
        let (dst, src) = (out.bytes_mut(), x.bytes());
        let row_b = cols * es;
        if row_b > 0 {
            for (ri, (d, s)) in dst.chunks_mut(row_b).zip(src.chunks(row_b)).enumerate() {
                let i = (ri % rows.max(1)) as i128;
                let c_lim = |v: i128| v.clamp(0, cols as i128) as usize;
                let (a, b) = if upper { (c_lim(i + k as i128), cols) } else { (0, c_lim(i + k as i128 + 1)) };
                if a < b {
                    d[a * es..b * es].copy_from_slice(&s[a * es..b * es]);
                }
            }
        }
        Ok(vec![out])
    })
}
