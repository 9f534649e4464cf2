//! The copy engine behind the layout operators.
//!
//! [`gather_copy`] fills a contiguous output where the source offset of an
//! element is a sum of per-axis offsets ([`Src`]): an affine map covers
//! transposes, slices (negative steps included), broadcasts (step 0) and
//! tiles; a table covers pads with reflect/edge/wrap and nearest resizing.
//! Adjacent affine axes are merged, contiguous inner runs are copied with
//! `copy_from_slice`, and a 2-D swap of the two innermost axes takes a
//! cache-blocked path. Elements are moved as u8/u16/u32/u64 by their size.

use bytemuck::Pod;
use rayon::prelude::*;
use tessera_core::{Error, Result};

/// Outputs at least this large are split across threads.
pub(crate) const PAR_BYTES: usize = 1 << 20;
/// Tile edge of the blocked transpose.
const TILE: usize = 32;

/// Source offsets (in elements) along one output axis.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Src {
    /// `offset(i) = start + i * step`.
    Affine { start: usize, step: isize },
    /// `offset(i) = table[i]`.
    Table(Vec<usize>),
}

impl Src {
    /// Offset `i * step`.
    pub(crate) fn step(step: usize) -> Src {
        Src::Affine { start: 0, step: step as isize }
    }

    #[inline]
    fn at(&self, i: usize) -> isize {
        match self {
            Src::Affine { start, step } => *start as isize + i as isize * *step,
            Src::Table(t) => t[i] as isize,
        }
    }

    /// Smallest and largest offsets over `0..n` (n > 0), or None when an
    /// offset would be negative or the table is too short.
    fn range(&self, n: usize) -> Option<(usize, usize)> {
        match self {
            Src::Affine { start, step } => {
                let a = *start as i128;
                let b = a + (n as i128 - 1) * (*step as i128);
                if b < 0 || b > isize::MAX as i128 {
                    return None;
                }
                Some((a.min(b) as usize, a.max(b) as usize))
            }
            Src::Table(t) => {
                let t = t.get(..n)?;
                Some((*t.iter().min()?, *t.iter().max()?))
            }
        }
    }
}

fn internal(msg: &str) -> Error {
    Error::Other(format!("internal error in the copy engine: {msg}"))
}

/// Fills `dst` (contiguous, row-major over `shape`) from `src`, where the
/// source element of output index `(i0, i1, ...)` is at
/// `axes[0].at(i0) + axes[1].at(i1) + ...`. `es` is the element size.
pub(crate) fn gather_copy(dst: &mut [u8], src: &[u8], es: usize, shape: &[usize], axes: Vec<Src>) -> Result<()> {
    if shape.len() != axes.len() {
        return Err(internal("one axis map per dimension expected"));
    }
    let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| internal("size overflow"))?;
    if dst.len() != n * es {
        return Err(internal("destination size mismatch"));
    }
    if n == 0 {
        return Ok(());
    }
    let mut max_off = 0usize;
    for (&d, a) in shape.iter().zip(&axes) {
        let (_, hi) = a.range(d).ok_or_else(|| internal("axis map out of range"))?;
        max_off = max_off.checked_add(hi).ok_or_else(|| internal("offset overflow"))?;
    }
    if max_off.checked_add(1).and_then(|m| m.checked_mul(es)).is_none_or(|m| m > src.len()) {
        return Err(internal("source offset out of bounds"));
    }

    // Drop unit axes, fold affine starts into the base offset and merge
    // neighbouring affine axes that are contiguous with each other.
    let mut base: isize = 0;
    let mut dims: Vec<(usize, Src)> = Vec::with_capacity(shape.len());
    for (&d, a) in shape.iter().zip(axes) {
        if d == 1 {
            base += a.at(0);
            continue;
        }
        match a {
            Src::Affine { start, step } => {
                base += start as isize;
                dims.push((d, Src::Affine { start: 0, step }));
            }
            t => dims.push((d, t)),
        }
    }
    let mut merged: Vec<(usize, Src)> = Vec::with_capacity(dims.len());
    for (d, a) in dims.into_iter().rev() {
        if let (Some((pd, Src::Affine { step: ps, .. })), Src::Affine { step, .. }) = (merged.last_mut(), &a) {
            if *step == *ps * *pd as isize {
                *pd *= d;
                continue;
            }
        }
        merged.push((d, a));
    }
    merged.reverse();
    if merged.is_empty() {
        merged.push((1, Src::step(1)));
    }

    match es {
        1 => typed::<u8>(dst, src, &merged, base),
        2 => typed::<u16>(dst, src, &merged, base),
        4 => typed::<u32>(dst, src, &merged, base),
        8 => typed::<u64>(dst, src, &merged, base),
        _ => Err(internal("unsupported element size")),
    }
}

fn typed<T: Pod + Send + Sync>(dst: &mut [u8], src: &[u8], dims: &[(usize, Src)], base: isize) -> Result<()> {
    let dst: &mut [T] = bytemuck::try_cast_slice_mut(dst).map_err(|_| internal("misaligned destination"))?;
    match bytemuck::try_cast_slice::<u8, T>(src) {
        Ok(s) => run(dst, s, dims, base),
        Err(_) => run(dst, &bytemuck::pod_collect_to_vec::<u8, T>(src), dims, base),
    }
    Ok(())
}

fn run<T: Pod + Send + Sync>(dst: &mut [T], src: &[T], dims: &[(usize, Src)], base: isize) {
    let rank = dims.len();
    // When the innermost output axis is strided in the source but another
    // axis is contiguous there, copy through tiles over that pair of axes.
    if let Src::Affine { step: sj, .. } = dims[rank - 1].1 {
        let p = dims[..rank - 1].iter().rposition(|(_, a)| matches!(a, Src::Affine { step: 1, .. }));
        if let Some(p) = p.filter(|_| sj > 1) {
            transpose_tiled(dst, src, dims, base, p, sj as usize);
            return;
        }
    }
    let (inner_n, inner) = (&dims[rank - 1].0, &dims[rank - 1].1);
    let outer = &dims[..rank - 1];
    let rows = dst.len() / inner_n;
    let do_rows = |chunk: &mut [T], first_row: usize| {
        let mut idx = unravel(outer, first_row);
        for row in chunk.chunks_mut(*inner_n) {
            let off = base + outer.iter().zip(&idx).map(|((_, a), &i)| a.at(i)).sum::<isize>();
            copy_row(row, src, off, inner);
            advance(outer, &mut idx);
        }
    };
    if std::mem::size_of_val(dst) >= PAR_BYTES && rows > 1 {
        let per = rows.div_ceil(rayon::current_num_threads() * 4).max(1);
        dst.par_chunks_mut(per * inner_n).enumerate().for_each(|(c, ch)| do_rows(ch, c * per));
    } else {
        do_rows(dst, 0);
    }
}

/// Multi-index (over `dims`) of flat position `r`.
fn unravel(dims: &[(usize, Src)], mut r: usize) -> Vec<usize> {
    let mut idx = vec![0usize; dims.len()];
    for d in (0..dims.len()).rev() {
        idx[d] = r % dims[d].0;
        r /= dims[d].0;
    }
    idx
}

/// Increments a row-major multi-index.
fn advance(dims: &[(usize, Src)], idx: &mut [usize]) {
    for d in (0..dims.len()).rev() {
        idx[d] += 1;
        if idx[d] < dims[d].0 {
            return;
        }
        idx[d] = 0;
    }
}

#[inline]
fn copy_row<T: Pod>(row: &mut [T], src: &[T], off: isize, inner: &Src) {
    let o = off as usize;
    match inner {
        Src::Affine { step: 1, .. } => row.copy_from_slice(&src[o..o + row.len()]),
        Src::Affine { step: 0, .. } => row.fill(src[o]),
        Src::Affine { step, .. } => {
            for (i, v) in row.iter_mut().enumerate() {
                *v = src[(off + i as isize * step) as usize];
            }
        }
        Src::Table(t) => {
            for (v, &t) in row.iter_mut().zip(t) {
                *v = src[o + t];
            }
        }
    }
}

/// The tiled copy for `dims = [prefix.., (ni, step 1), mid.., (nj, step sj)]`
/// (the axis at `p` is contiguous in the source, the last one is not):
/// `dst[.., i, .., j] = src[.. + i + .. + j * sj]`. Tiles of TILE x TILE
/// go through a small buffer so that both sides move whole cache lines.
fn transpose_tiled<T: Pod + Send + Sync>(
    dst: &mut [T],
    src: &[T],
    dims: &[(usize, Src)],
    base: isize,
    p: usize,
    sj: usize,
) {
    let rank = dims.len();
    let (prefix, ni, mid, nj) = (&dims[..p], dims[p].0, &dims[p + 1..rank - 1], dims[rank - 1].0);
    let mid_n: usize = mid.iter().map(|(d, _)| d).product();
    // Output stride of axis p: each (prefix, i) "row" is a contiguous block.
    let dsi = mid_n * nj;
    let rows = dst.len() / dsi;
    let offset = |axes: &[(usize, Src)], mut flat: usize| -> isize {
        let mut off = 0;
        for (d, a) in axes.iter().rev() {
            off += a.at(flat % d);
            flat /= d;
        }
        off
    };
    let mid_off: Vec<isize> = (0..mid_n).map(|m| offset(mid, m)).collect();
    let do_chunk = |chunk: &mut [T], r0: usize| {
        let mut buf = vec![T::zeroed(); TILE * TILE];
        let end = r0 + chunk.len() / dsi;
        let mut r = r0;
        while r < end {
            let (q, i0) = (r / ni, r % ni);
            let seg = (ni - i0).min(end - r);
            let blk = &mut chunk[(r - r0) * dsi..(r - r0 + seg) * dsi];
            let off = base + offset(prefix, q) + i0 as isize;
            for (m, &mo) in mid_off.iter().enumerate() {
                let k = Kernel { rows: seg, nj, sj, dsi, d0: m * nj };
                k.run(blk, src, (off + mo) as usize, &mut buf);
            }
            r += seg;
        }
    };
    if std::mem::size_of_val(dst) >= PAR_BYTES && rows > TILE {
        let per = rows.div_ceil(rayon::current_num_threads() * 4).next_multiple_of(TILE);
        dst.par_chunks_mut(per * dsi).enumerate().for_each(|(c, ch)| do_chunk(ch, c * per));
    } else {
        do_chunk(dst, 0);
    }
}

/// One tiled block copy: `blk[d0 + i * dsi + j] = src[off + i + j * sj]`
/// for `i < rows`, `j < nj`.
struct Kernel {
    rows: usize,
    nj: usize,
    sj: usize,
    dsi: usize,
    d0: usize,
}

impl Kernel {
    fn run<T: Pod>(&self, blk: &mut [T], src: &[T], off: usize, buf: &mut [T]) {
        for ib in (0..self.rows).step_by(TILE) {
            let ilen = TILE.min(self.rows - ib);
            for jb in (0..self.nj).step_by(TILE) {
                let jlen = TILE.min(self.nj - jb);
                for jj in 0..jlen {
                    let s = off + ib + (jb + jj) * self.sj;
                    buf[jj * TILE..jj * TILE + ilen].copy_from_slice(&src[s..s + ilen]);
                }
                for ii in 0..ilen {
                    let d = self.d0 + (ib + ii) * self.dsi + jb;
                    for (jj, v) in blk[d..d + jlen].iter_mut().enumerate() {
                        *v = buf[jj * TILE + ii];
                    }
                }
            }
        }
    }
}

/// Fills `dst` with copies of the element `pat`.
pub(crate) fn fill_pattern(dst: &mut [u8], pat: &[u8]) {
    let es = pat.len();
    if es == 0 || dst.len() < es {
        return;
    }
    dst[..es].copy_from_slice(pat);
    let mut filled = es;
    while filled < dst.len() {
        let n = filled.min(dst.len() - filled);
        dst.copy_within(0..n, filled);
        filled += n;
    }
}

/// Constant padding and cropping: output element `o` comes from input
/// element `o - begin` when that lies inside the input, else it is `value`.
/// `dst` must be freshly zeroed (the fill is skipped for a zero value).
pub(crate) fn pad_constant(
    dst: &mut [u8],
    src: &[u8],
    in_shape: &[usize],
    out_shape: &[usize],
    begin: &[i64],
    value: &[u8],
) -> Result<()> {
    let es = value.len();
    let rank = out_shape.len();
    let out_n: usize = out_shape.iter().product();
    let in_n: usize = in_shape.iter().product();
    if in_shape.len() != rank || begin.len() != rank || dst.len() != out_n * es || src.len() != in_n * es {
        return Err(internal("pad_constant arguments disagree"));
    }
    if out_n == 0 {
        return Ok(());
    }
    if value.iter().any(|&b| b != 0) {
        fill_pattern(dst, value);
    }
    if rank == 0 {
        dst.copy_from_slice(src);
        return Ok(());
    }
    // Output range [lo, hi) of each axis that maps inside the input.
    let mut lo = vec![0usize; rank];
    let mut hi = vec![0usize; rank];
    for d in 0..rank {
        let (b, n, o) = (begin[d] as i128, in_shape[d] as i128, out_shape[d] as i128);
        lo[d] = b.clamp(0, o) as usize;
        hi[d] = (b + n).clamp(0, o) as usize;
        if lo[d] >= hi[d] {
            return Ok(());
        }
    }
    let ist = super::strides(in_shape);
    let ost = super::strides(out_shape);
    let last = rank - 1;
    let run = (hi[last] - lo[last]) * es;
    let mut idx: Vec<usize> = lo[..last].to_vec();
    loop {
        let mut d_off = lo[last] * ost[last];
        let mut s_off = (lo[last] as i64 - begin[last]) as usize * ist[last];
        for d in 0..last {
            d_off += idx[d] * ost[d];
            s_off += (idx[d] as i64 - begin[d]) as usize * ist[d];
        }
        dst[d_off * es..d_off * es + run].copy_from_slice(&src[s_off * es..s_off * es + run]);
        // Next row inside the box.
        let mut d = last;
        loop {
            if d == 0 {
                return Ok(());
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < hi[d] {
                break;
            }
            idx[d] = lo[d];
        }
    }
}

/// Copies, for every outer index, the range `[start, start + len)` of axis
/// `axis` of a tensor of shape `shape` into `dst` (contiguous): the Split
/// primitive.
pub(crate) fn copy_axis_range(
    dst: &mut [u8],
    src: &[u8],
    es: usize,
    shape: &[usize],
    axis: usize,
    start: usize,
    len: usize,
) -> Result<()> {
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product::<usize>() * es;
    let n = shape[axis];
    if start + len > n || dst.len() != outer * len * inner || src.len() != outer * n * inner {
        return Err(internal("copy_axis_range arguments disagree"));
    }
    let chunk = len * inner;
    if chunk == 0 {
        return Ok(());
    }
    let copy = |(o, d): (usize, &mut [u8])| {
        let s = (o * n + start) * inner;
        d.copy_from_slice(&src[s..s + chunk]);
    };
    if dst.len() >= PAR_BYTES && outer > 1 {
        dst.par_chunks_mut(chunk).enumerate().for_each(copy);
    } else {
        dst.chunks_mut(chunk).enumerate().for_each(copy);
    }
    Ok(())
}

/// `dst[i] = src[offsets[i]]` element by element.
pub(crate) fn gather_elements(dst: &mut [u8], src: &[u8], es: usize, offsets: &[usize]) -> Result<()> {
    if dst.len() != offsets.len() * es || offsets.iter().any(|&o| (o + 1) * es > src.len()) {
        return Err(internal("gather_elements arguments disagree"));
    }
    fn go<T: Pod>(dst: &mut [u8], src: &[u8], offsets: &[usize]) -> Result<()> {
        let d: &mut [T] = bytemuck::try_cast_slice_mut(dst).map_err(|_| internal("misaligned destination"))?;
        match bytemuck::try_cast_slice::<u8, T>(src) {
            Ok(s) => d.iter_mut().zip(offsets).for_each(|(v, &o)| *v = s[o]),
            Err(_) => {
                let s = bytemuck::pod_collect_to_vec::<u8, T>(src);
                d.iter_mut().zip(offsets).for_each(|(v, &o)| *v = s[o]);
            }
        }
        Ok(())
    }
    match es {
        1 => go::<u8>(dst, src, offsets),
        2 => go::<u16>(dst, src, offsets),
        4 => go::<u32>(dst, src, offsets),
        8 => go::<u64>(dst, src, offsets),
        _ => Err(internal("unsupported element size")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iota(n: usize) -> Vec<u8> {
        (0..n as u32).flat_map(|v| v.to_le_bytes()).collect()
    }
    fn vals(b: &[u8]) -> Vec<u32> {
        bytemuck::pod_collect_to_vec(b)
    }

    #[test]
    fn transpose_2d_blocked_and_small() {
        for (r, c) in [(3usize, 5usize), (37, 70), (64, 64)] {
            let src = iota(r * c);
            let mut dst = vec![0u8; r * c * 4];
            gather_copy(&mut dst, &src, 4, &[c, r], vec![Src::step(1), Src::step(c)]).unwrap();
            let v = vals(&dst);
            for i in 0..c {
                for j in 0..r {
                    assert_eq!(v[i * r + j], (j * c + i) as u32);
                }
            }
        }
    }

    #[test]
    fn negative_steps_and_broadcast() {
        let src = iota(6);
        let mut dst = vec![0u8; 6 * 4];
        // reverse both axes of [2, 3]
        gather_copy(
            &mut dst,
            &src,
            4,
            &[2, 3],
            vec![Src::Affine { start: 3, step: -3 }, Src::Affine { start: 2, step: -1 }],
        )
        .unwrap();
        assert_eq!(vals(&dst), vec![5, 4, 3, 2, 1, 0]);
        let mut dst = vec![0u8; 6 * 4];
        gather_copy(&mut dst, &src[..12], 4, &[2, 3], vec![Src::step(0), Src::step(1)]).unwrap();
        assert_eq!(vals(&dst), vec![0, 1, 2, 0, 1, 2]);
        // out-of-bounds maps are reported, not panicking
        let mut dst = vec![0u8; 4 * 4];
        assert!(gather_copy(&mut dst, &src, 4, &[4], vec![Src::step(2)]).is_err());
        assert!(gather_copy(&mut dst, &src, 4, &[4], vec![Src::Affine { start: 1, step: -1 }]).is_err());
    }

    #[test]
    fn pad_constant_crops_and_pads() {
        let src = iota(6); // [2, 3]
        let mut dst = vec![0u8; 2 * 4 * 4];
        let seven = 7u32.to_le_bytes();
        pad_constant(&mut dst, &src, &[2, 3], &[2, 4], &[-1, 2], &seven).unwrap();
        assert_eq!(vals(&dst), vec![7, 7, 3, 4, 7, 7, 7, 7]);
    }
}
