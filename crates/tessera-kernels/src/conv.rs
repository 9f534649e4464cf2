//! Convolution over NC[D][H]W tensors, in a canonical 3-D form: 1-D and 2-D
//! problems are padded with leading spatial dimensions of size 1 (kernel 1,
//! stride 1, no padding), so one set of loops serves all three ranks.
//!
//! Three forward strategies:
//! * depthwise (one input channel per group): each output row a sum of
//!   shifted rows of a padded copy of its input plane (`depthwise`), or,
//!   where that copy would be too large, a direct loop over each tap's
//!   valid part;
//! * 1x1, stride 1, no padding: a plain batched GEMM on the input, no im2col;
//! * everything else: im2col over blocks of output positions into a
//!   per-thread buffer, then a GEMM writing straight into the output.
//!
//! Transposed convolution is a GEMM followed by col2im.

use rayon::prelude::*;

use crate::depthwise::{depthwise_planes, DepthwisePlan, PlaneSource};
use crate::gemm::{gemm_batched, gemm_raw, BatchRef, GemmScalar, MatRef, Parallel};
use crate::SyncPtr;

/// Shape of one convolution in canonical 3-D form. For a transposed
/// convolution `input`/`output` are still the op's input and output sizes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub batch: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub groups: usize,
    pub input: [usize; 3],
    pub output: [usize; 3],
    pub kernel: [usize; 3],
    pub stride: [usize; 3],
    /// Leading padding of each dimension (trailing padding only shapes
    /// `output`). May be negative for a transposed convolution whose
    /// requested output is larger than its natural size.
    pub pad: [isize; 3],
    pub dilation: [usize; 3],
}

impl ConvGeom {
    pub fn in_size(&self) -> usize {
        self.input.iter().product()
    }
    pub fn out_size(&self) -> usize {
        self.output.iter().product()
    }
    pub fn kernel_size(&self) -> usize {
        self.kernel.iter().product()
    }
    pub fn in_per_group(&self) -> usize {
        self.in_channels / self.groups.max(1)
    }
    pub fn out_per_group(&self) -> usize {
        self.out_channels / self.groups.max(1)
    }

    /// Checks the invariants the kernels rely on; the operator layer turns a
    /// failure into an error on the node.
    pub fn validate(&self) -> Result<(), String> {
        if self.groups == 0
            || !self.in_channels.is_multiple_of(self.groups)
            || !self.out_channels.is_multiple_of(self.groups)
        {
            return Err(format!(
                "group {} must divide the input channels {} and output channels {}",
                self.groups, self.in_channels, self.out_channels
            ));
        }
        if self.stride.contains(&0) || self.dilation.contains(&0) {
            return Err("strides and dilations must be positive".into());
        }
        Ok(())
    }
}

/// Positions `o` in `0..count` for which `o * stride + off` lands in
/// `0..len`, as a half-open range.
#[inline]
pub(crate) fn valid_range(count: usize, len: usize, stride: usize, off: isize) -> (usize, usize) {
    let s = stride as isize;
    let lo = if off >= 0 { 0 } else { ((-off) + s - 1) / s };
    let room = len as isize - off;
    let hi = if room <= 0 { 0 } else { (room + s - 1) / s };
    let hi = (hi as usize).min(count);
    let lo = (lo as usize).min(hi);
    (lo, hi)
}

/// Input coordinate for output coordinate `o`, kernel tap `k` along a dim.
#[inline]
fn in_coord(o: usize, k: usize, stride: usize, dil: usize, pad: isize) -> isize {
    (o * stride + k * dil) as isize - pad
}

/// im2col for output positions `p0..p1` (flattened over the output volume)
/// of `channels` input planes: `col` is `[channels * kernel_size, p1 - p0]`,
/// row-major, rows ordered (channel, kd, kh, kw) like the weights.
pub fn im2col<T: Copy + Default>(g: &ConvGeom, x: &[T], channels: usize, p0: usize, p1: usize, col: &mut [T]) {
    let nb = p1 - p0;
    let in_size = g.in_size();
    let [_, oh, ow] = g.output;
    let [id, ih, iw] = g.input;
    let [kd, kh, kw] = g.kernel;
    let [s0, s1, s2] = g.stride;
    let [d0, d1, d2] = g.dilation;
    let [q0, q1, q2] = g.pad;
    let zero = T::default();
    let mut row = 0;
    for c in 0..channels {
        let xc = &x[c * in_size..(c + 1) * in_size];
        for a in 0..kd {
            for b in 0..kh {
                for e in 0..kw {
                    let dst = &mut col[row * nb..(row + 1) * nb];
                    row += 1;
                    let off2 = (e * d2) as isize - q2;
                    let mut p = p0;
                    while p < p1 {
                        let ox0 = p % ow;
                        let rest = p / ow;
                        let oy = rest % oh;
                        let oz = rest / oh;
                        let end = (p - ox0 + ow).min(p1);
                        let len = end - p;
                        let seg = &mut dst[p - p0..p - p0 + len];
                        p = end;
                        let z = in_coord(oz, a, s0, d0, q0);
                        let y = in_coord(oy, b, s1, d1, q1);
                        if z < 0 || z >= id as isize || y < 0 || y >= ih as isize {
                            seg.fill(zero);
                            continue;
                        }
                        let line = &xc[(z as usize * ih + y as usize) * iw..][..iw];
                        let (lo, hi) = valid_range(ox0 + len, iw, s2, off2);
                        let (lo, hi) = (lo.max(ox0) - ox0, hi.max(ox0) - ox0);
                        seg[..lo].fill(zero);
                        seg[hi.max(lo)..].fill(zero);
                        if hi > lo {
                            let ix0 = ((ox0 + lo) * s2) as isize + off2;
                            let ix0 = ix0 as usize;
                            if s2 == 1 {
                                seg[lo..hi].copy_from_slice(&line[ix0..ix0 + (hi - lo)]);
                            } else {
                                for (i, v) in seg[lo..hi].iter_mut().enumerate() {
                                    *v = line[ix0 + i * s2];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Like [`im2col`] but transposed ("im2row"): `rows` is
/// `[p1 - p0, channels * kernel_size]`, one patch per output position, the
/// layout integer dot products want.
pub fn im2row<T: Copy + Default>(g: &ConvGeom, x: &[T], channels: usize, p0: usize, p1: usize, rows: &mut [T]) {
    im2row_padded(g, x, channels, p0, p1, rows, T::default())
}

/// [`im2row`] with positions outside the input set to `zero` (a quantized
/// input's zero point, so that padding contributes nothing).
pub fn im2row_padded<T: Copy>(g: &ConvGeom, x: &[T], channels: usize, p0: usize, p1: usize, rows: &mut [T], zero: T) {
    let (in_size, ksz) = (g.in_size(), g.kernel_size());
    for p in p0..p1 {
        let dst = &mut rows[(p - p0) * channels * ksz..][..channels * ksz];
        let at = output_coords(g, p);
        // Channel by channel: each plane is a one-channel channels-last image.
        for (c, taps) in dst.chunks_exact_mut(ksz.max(1)).enumerate() {
            position_taps(g, &x[c * in_size..][..in_size], 1, at, taps, zero);
        }
    }
}

/// `x` as `[channels, positions]` written into `y` as `[positions,
/// channels]` (an image from channels first to channels last), spread over
/// the pool in blocks of 32 positions by 32 channels, so that both sides
/// stay in cache.
pub fn to_channels_last<T: Copy + Send + Sync>(x: &[T], channels: usize, positions: usize, y: &mut [T]) {
    const B: usize = 32;
    assert!(x.len() >= channels * positions && y.len() >= channels * positions, "image buffers too small");
    if channels == 0 || positions == 0 {
        return;
    }
    y[..channels * positions].par_chunks_mut(B * channels).enumerate().for_each(|(bi, yb)| {
        let p0 = bi * B;
        let np = yb.len() / channels;
        for c0 in (0..channels).step_by(B) {
            for c in c0..(c0 + B).min(channels) {
                let src = &x[c * positions + p0..][..np];
                for (j, &v) in src.iter().enumerate() {
                    yb[j * channels + c] = v;
                }
            }
        }
    });
}

/// [`to_channels_last`] for bytes: blocks of 8 channels by 8 positions are
/// moved as eight 64-bit words and transposed in registers (three rounds of
/// masked shifts that swap 4-, 2- and 1-byte halves), instead of one byte
/// load and store per value; ragged edges go value by value.
pub fn bytes_to_channels_last(x: &[u8], channels: usize, positions: usize, y: &mut [u8]) {
    const POSITIONS_PER_TASK: usize = 64;
    assert!(x.len() >= channels * positions && y.len() >= channels * positions, "image buffers too small");
    if channels == 0 || positions == 0 {
        return;
    }
    y[..channels * positions].par_chunks_mut(POSITIONS_PER_TASK * channels).enumerate().for_each(|(bi, yb)| {
        let p0 = bi * POSITIONS_PER_TASK;
        let np = yb.len() / channels;
        let (c8, p8) = (channels - channels % 8, np - np % 8);
        for c0 in (0..c8).step_by(8) {
            for j0 in (0..p8).step_by(8) {
                let mut r = [0u64; 8];
                for (i, w) in r.iter_mut().enumerate() {
                    let at = (c0 + i) * positions + p0 + j0;
                    *w = u64::from_le_bytes(x[at..at + 8].try_into().expect("8 bytes"));
                }
                transpose_8x8_bytes(&mut r);
                for (j, w) in r.iter().enumerate() {
                    let at = (j0 + j) * channels + c0;
                    yb[at..at + 8].copy_from_slice(&w.to_le_bytes());
                }
            }
        }
        // The edges: channels past the last multiple of 8 at every
        // position, and positions past it for the other channels.
        for c in 0..channels {
            let src = &x[c * positions + p0..][..np];
            let from = if c < c8 { p8 } else { 0 };
            for (j, &v) in src.iter().enumerate().skip(from) {
                yb[j * channels + c] = v;
            }
        }
    });
}

/// Transposes the 8x8 byte matrix whose row `i` is word `i` (byte `j` of a
/// word, little-endian, is column `j`).
#[inline(always)]
fn transpose_8x8_bytes(r: &mut [u64; 8]) {
    // Swap the upper 4 bytes of rows 0-3 with the lower 4 of rows 4-7, then
    // 2-byte pairs between rows 2 apart, then bytes between neighbours.
    for (half, mask) in [(4usize, 0x0000_0000_FFFF_FFFFu64), (2, 0x0000_FFFF_0000_FFFF), (1, 0x00FF_00FF_00FF_00FF)] {
        let shift = 8 * half as u32;
        for i in 0..8 {
            if i & half == 0 {
                let (a, b) = (r[i], r[i + half]);
                r[i] = (a & mask) | ((b & mask) << shift);
                r[i + half] = ((a >> shift) & mask) | (b & !mask);
            }
        }
    }
}

/// im2row from a channels-last image `x` (`[in positions, channels]`, see
/// [`to_channels_last`]) for output positions `p0..p1`: row `p - p0` of
/// `rows` holds position `p`'s taps in (kd, kh, kw, channel) order, `zero`
/// where a tap falls in the padding. A tap is a run of `channels` values,
/// and the taps of one kernel row are one run of `kw * channels` when they
/// all lie inside the image, so rows are filled by long copies rather than
/// by the few taps per channel that channels-first im2row copies at a time.
/// The weight's columns must be in the same (tap, channel) order.
#[allow(clippy::too_many_arguments)]
pub fn im2row_channels_last<T: Copy>(
    g: &ConvGeom,
    x: &[T],
    channels: usize,
    p0: usize,
    p1: usize,
    rows: &mut [T],
    zero: T,
) {
    let ck = channels * g.kernel_size();
    for p in p0..p1 {
        position_taps(g, x, channels, output_coords(g, p), &mut rows[(p - p0) * ck..][..ck], zero);
    }
}

/// Output position `p` (flattened) as `[z, y, x]`.
fn output_coords(g: &ConvGeom, p: usize) -> [usize; 3] {
    let [_, oh, ow] = g.output;
    [p / (ow * oh), (p / ow) % oh, p % ow]
}

/// The taps of the output position at `[oz, oy, ox]` from a channels-last
/// image `x`, in (kd, kh, kw, channel) order, into `dst`, `zero` where a
/// tap falls in the padding: a kernel row inside the image is one copy of
/// `kw * channels` values.
fn position_taps<T: Copy>(g: &ConvGeom, x: &[T], channels: usize, [oz, oy, ox]: [usize; 3], dst: &mut [T], zero: T) {
    let [id, ih, iw] = g.input;
    let [kd, kh, kw] = g.kernel;
    let [s0, s1, s2] = g.stride;
    let [d0, d1, d2] = g.dilation;
    let [q0, q1, q2] = g.pad;
    let run = kw * channels;
    let mut i = 0;
    for a in 0..kd {
        let z = in_coord(oz, a, s0, d0, q0);
        for b in 0..kh {
            let y = in_coord(oy, b, s1, d1, q1);
            let dst = &mut dst[i..i + run];
            i += run;
            if z < 0 || z >= id as isize || y < 0 || y >= ih as isize {
                dst.fill(zero);
                continue;
            }
            let line = &x[(z as usize * ih + y as usize) * iw * channels..][..iw * channels];
            let x0 = in_coord(ox, 0, s2, d2, q2);
            let x1 = in_coord(ox, kw - 1, s2, d2, q2);
            if d2 == 1 && x0 >= 0 && (x1 as usize) < iw {
                dst.copy_from_slice(&line[x0 as usize * channels..][..run]);
                continue;
            }
            for (e, tap) in dst.chunks_exact_mut(channels.max(1)).enumerate() {
                let xx = in_coord(ox, e, s2, d2, q2);
                if xx >= 0 && (xx as usize) < iw {
                    tap.copy_from_slice(&line[xx as usize * channels..][..channels]);
                } else {
                    tap.fill(zero);
                }
            }
        }
    }
}

/// Output columns per im2col block: the column buffer stays near 1 MiB and
/// there are enough blocks to keep every thread busy.
fn col_block(ck: usize, out_size: usize, outer_tasks: usize, threads: usize, elem: usize) -> usize {
    let mut nb = ((1usize << 20) / (ck.max(1) * elem)).max(32);
    let blocks_wanted = (2 * threads).div_ceil(outer_tasks.max(1));
    if blocks_wanted > 1 {
        nb = nb.min(out_size.div_ceil(blocks_wanted).max(64));
    }
    nb.min(out_size).max(1)
}

/// A 1x1 convolution with unit strides and no padding: each output
/// position reads the input at the same position, so the input is already
/// its own im2col matrix.
pub fn is_pointwise(g: &ConvGeom) -> bool {
    g.kernel == [1, 1, 1] && g.stride == [1, 1, 1] && g.pad == [0isize; 3] && g.input == g.output
}

/// Forward convolution: `x` is `[N, C, in...]`, `w` is `[M, C / groups,
/// k...]` (ONNX layout, used as is), `y` is `[N, M, out...]`. Every output
/// element is written. Panics only on caller bugs (slices of the wrong size).
pub fn conv_forward<T: GemmScalar>(g: &ConvGeom, x: &[T], w: &[T], bias: Option<&[T]>, y: &mut [T]) {
    let (in_size, out_size, ks) = (g.in_size(), g.out_size(), g.kernel_size());
    let cin_g = g.in_per_group();
    assert!(x.len() >= g.batch * g.in_channels * in_size, "conv input too small");
    assert!(w.len() >= g.out_channels * cin_g * ks, "conv weights too small");
    assert!(y.len() >= g.batch * g.out_channels * out_size, "conv output too small");
    if let Some(b) = bias {
        assert!(b.len() >= g.out_channels, "conv bias too small");
    }
    let y = &mut y[..g.batch * g.out_channels * out_size];
    if y.is_empty() {
        return;
    }
    if cin_g == 0 || ks == 0 {
        fill_bias(y, bias, g.out_channels, out_size);
        return;
    }
    if cin_g == 1 && g.groups == g.in_channels {
        // The padded loop is f32's (f64 keeps the direct one).
        match (DepthwisePlan::new(g), T::as_f32(x), T::as_f32(w), bias.and_then(T::as_f32)) {
            (Some(plan), Some(x), Some(w), b) if b.is_some() == bias.is_some() => {
                let y = T::as_f32_mut(y).expect("y has x's type");
                let bias_of = |m: usize| b.map_or(0.0, |b| b[m]);
                depthwise_planes(&plan, PlaneSource::F32(x), w, bias_of, y, |_, sums, out| out.copy_from_slice(sums));
            }
            _ => depthwise_direct(g, x, w, bias, y),
        }
    } else if is_pointwise(g) {
        pointwise(g, x, w, bias, y);
    } else {
        general(g, x, w, bias, y);
    }
}

fn fill_bias<T: GemmScalar>(y: &mut [T], bias: Option<&[T]>, channels: usize, plane: usize) {
    for (i, yp) in y.chunks_mut(plane.max(1)).enumerate() {
        yp.fill(bias.map_or(T::ZERO, |b| b[i % channels]));
    }
}

fn pointwise<T: GemmScalar>(g: &ConvGeom, x: &[T], w: &[T], bias: Option<&[T]>, y: &mut [T]) {
    let (hw, groups) = (g.in_size(), g.groups);
    let (cin_g, cout_g) = (g.in_per_group(), g.out_per_group());
    let nb = g.batch * groups;
    let a_off: Vec<usize> = (0..nb).map(|i| (i % groups) * cout_g * cin_g).collect();
    let b_off: Vec<usize> = (0..nb).map(|i| i * cin_g * hw).collect();
    let epi = |bi: usize, r0: usize, rows: &mut [T]| {
        if let Some(b) = bias {
            let ch0 = (bi % groups) * cout_g + r0;
            for (r, row) in rows.chunks_mut(hw).enumerate() {
                let bv = b[ch0 + r];
                for v in row {
                    *v += bv;
                }
            }
        }
    };
    gemm_batched(
        BatchRef { data: w, offsets: &a_off, rows: cout_g, cols: cin_g, row_stride: cin_g, col_stride: 1 },
        BatchRef { data: x, offsets: &b_off, rows: cin_g, cols: hw, row_stride: hw, col_stride: 1 },
        y,
        T::ONE,
        T::ZERO,
        if bias.is_some() { Some(&epi) } else { None },
    );
}

fn general<T: GemmScalar>(g: &ConvGeom, x: &[T], w: &[T], bias: Option<&[T]>, y: &mut [T]) {
    let (in_size, out_size, ks) = (g.in_size(), g.out_size(), g.kernel_size());
    let (cin_g, cout_g, groups, m_all) = (g.in_per_group(), g.out_per_group(), g.groups, g.out_channels);
    let ck = cin_g * ks;
    let threads = rayon::current_num_threads().max(1);
    let outer = g.batch * groups;
    let nb = col_block(ck, out_size, outer, threads, std::mem::size_of::<T>());
    let nblocks = out_size.div_ceil(nb);
    let tasks = outer * nblocks;
    let inner = if tasks >= threads { Parallel::None } else { Parallel::Rayon(threads.div_ceil(tasks)) };
    let yp = SyncPtr(y.as_mut_ptr());
    let run = |t: usize| {
        let (blk, ng) = (t % nblocks, t / nblocks);
        let (n, gi) = (ng / groups, ng % groups);
        let p0 = blk * nb;
        let p1 = (p0 + nb).min(out_size);
        let cols = p1 - p0;
        let xg = &x[(n * g.in_channels + gi * cin_g) * in_size..][..cin_g * in_size];
        T::with_scratch(ck * cols, |col| {
            im2col(g, xg, cin_g, p0, p1, col);
            let a = MatRef::row_major(&w[gi * cout_g * ck..][..cout_g * ck], cout_g, ck);
            let b = MatRef::row_major(&*col, ck, cols);
            let dst_off = (n * m_all + gi * cout_g) * out_size + p0;
            // SAFETY: this task owns rows gi*cout_g..(gi+1)*cout_g of image n,
            // columns p0..p1 of the output; (n, gi, blk) is unique per task,
            // so no other task touches them, and the region lies inside `y`
            // (checked by the caller's size assertion).
            unsafe { gemm_raw(a, b, yp.get().add(dst_off), out_size, T::ONE, T::ZERO, inner) };
            if let Some(bias) = bias {
                for r in 0..cout_g {
                    // SAFETY: the same task-owned region as above, one row at a time.
                    let row = unsafe { std::slice::from_raw_parts_mut(yp.get().add(dst_off + r * out_size), cols) };
                    let bv = bias[gi * cout_g + r];
                    for v in row {
                        *v += bv;
                    }
                }
            }
        });
    };
    if tasks == 1 {
        run(0);
    } else {
        (0..tasks).into_par_iter().for_each(run);
    }
}

/// The kernel taps that reach output row `[oz, oy]` of a depthwise
/// convolution's plane: `tap(k, line, lo, hi, ix0)` for kernel tap `k`
/// whose input row lies inside the image (`line`, its offset in the input
/// plane) and output columns `lo..hi`, which read input columns `ix0`,
/// `ix0 + stride`, ... of that row. Shared by the float and integer kernels.
pub(crate) fn depthwise_taps(
    g: &ConvGeom,
    oz: usize,
    oy: usize,
    mut tap: impl FnMut(usize, usize, usize, usize, usize),
) {
    let ow = g.output[2];
    let [id, ih, iw] = g.input;
    let [kd, kh, kw] = g.kernel;
    let [s0, s1, s2] = g.stride;
    let [d0, d1, d2] = g.dilation;
    let [q0, q1, q2] = g.pad;
    for a in 0..kd {
        let z = in_coord(oz, a, s0, d0, q0);
        if z < 0 || z >= id as isize {
            continue;
        }
        for b in 0..kh {
            let yy = in_coord(oy, b, s1, d1, q1);
            if yy < 0 || yy >= ih as isize {
                continue;
            }
            let line = (z as usize * ih + yy as usize) * iw;
            for e in 0..kw {
                let off = (e * d2) as isize - q2;
                let (lo, hi) = valid_range(ow, iw, s2, off);
                if lo < hi {
                    tap((a * kh + b) * kw + e, line, lo, hi, ((lo * s2) as isize + off) as usize);
                }
            }
        }
    }
}

/// The direct depthwise loop, for planes whose padded copy would be too
/// large (and the reference the padded loop is tested against).
pub(crate) fn depthwise_direct<T: GemmScalar>(g: &ConvGeom, x: &[T], w: &[T], bias: Option<&[T]>, y: &mut [T]) {
    let (in_size, out_size, ks) = (g.in_size(), g.out_size(), g.kernel_size());
    let (cout_g, m_all, c_all) = (g.out_per_group(), g.out_channels, g.in_channels);
    let [od, oh, ow] = g.output;
    let (iw, s2) = (g.input[2], g.stride[2]);
    let plane = |nm: usize, yplane: &mut [T]| {
        let (n, m) = (nm / m_all, nm % m_all);
        let c = m / cout_g;
        let xp = &x[(n * c_all + c) * in_size..][..in_size];
        let wk = &w[m * ks..][..ks];
        yplane.fill(bias.map_or(T::ZERO, |b| b[m]));
        for oz in 0..od {
            for oy in 0..oh {
                let yl = &mut yplane[(oz * oh + oy) * ow..][..ow];
                depthwise_taps(g, oz, oy, |k, line, lo, hi, ix0| {
                    let (wv, xl) = (wk[k], &xp[line..][..iw]);
                    if s2 == 1 {
                        for (yv, &xv) in yl[lo..hi].iter_mut().zip(&xl[ix0..ix0 + hi - lo]) {
                            *yv += wv * xv;
                        }
                    } else {
                        for (i, yv) in yl[lo..hi].iter_mut().enumerate() {
                            *yv += wv * xl[ix0 + i * s2];
                        }
                    }
                });
            }
        }
    };
    if y.len() * ks < (1 << 14) {
        y.chunks_mut(out_size).enumerate().for_each(|(i, p)| plane(i, p));
    } else {
        y.par_chunks_mut(out_size).enumerate().for_each(|(i, p)| plane(i, p));
    }
}

/// Transposed convolution: `x` is `[N, C, in...]`, `w` is `[C, M / groups,
/// k...]`, `y` is `[N, M, out...]` (every element written). Per image and
/// group: `col = W_g^T @ X_g` over blocks of input positions, then col2im
/// accumulates the columns into the output.
pub fn conv_transpose<T: GemmScalar>(g: &ConvGeom, x: &[T], w: &[T], bias: Option<&[T]>, y: &mut [T]) {
    let (in_size, out_size, ks) = (g.in_size(), g.out_size(), g.kernel_size());
    let (cin_g, cout_g, groups) = (g.in_per_group(), g.out_per_group(), g.groups);
    assert!(x.len() >= g.batch * g.in_channels * in_size, "conv input too small");
    assert!(w.len() >= g.in_channels * cout_g * ks, "conv weights too small");
    assert!(y.len() >= g.batch * g.out_channels * out_size, "conv output too small");
    let y = &mut y[..g.batch * g.out_channels * out_size];
    fill_bias(y, bias, g.out_channels, out_size);
    if y.is_empty() || in_size == 0 || cin_g == 0 || ks == 0 || cout_g == 0 {
        return;
    }
    let rows = cout_g * ks;
    let threads = rayon::current_num_threads().max(1);
    let outer = g.batch * groups;
    let inner = if outer >= threads { Parallel::None } else { Parallel::Rayon(threads.div_ceil(outer)) };
    let nb = (((1usize << 20) / (rows * std::mem::size_of::<T>())).max(16)).min(in_size);
    let task = |ng: usize, yg: &mut [T]| {
        let (n, gi) = (ng / groups, ng % groups);
        let xg = &x[(n * g.in_channels + gi * cin_g) * in_size..][..cin_g * in_size];
        let wg = MatRef::row_major(&w[gi * cin_g * rows..][..cin_g * rows], cin_g, rows).t();
        let mut p0 = 0;
        while p0 < in_size {
            let p1 = (p0 + nb).min(in_size);
            let cols = p1 - p0;
            T::with_scratch(rows * cols, |col| {
                let xb = MatRef { data: &xg[p0..], rows: cin_g, cols, row_stride: in_size, col_stride: 1 };
                crate::gemm::gemm_checked(wg, xb, col, cols, T::ONE, T::ZERO, inner);
                let col = &*col;
                let scatter =
                    |m: usize, ym: &mut [T]| col2im_rows(g, &col[m * ks * cols..(m + 1) * ks * cols], p0, p1, ym);
                if outer >= threads || cout_g == 1 {
                    yg.chunks_mut(out_size).enumerate().for_each(|(m, ym)| scatter(m, ym));
                } else {
                    yg.par_chunks_mut(out_size).enumerate().for_each(|(m, ym)| scatter(m, ym));
                }
            });
            p0 = p1;
        }
    };
    if outer == 1 {
        task(0, y);
    } else {
        y.par_chunks_mut(cout_g * out_size).enumerate().for_each(|(ng, yg)| task(ng, yg));
    }
}

/// Accumulates the `kernel_size` column rows of one output channel (input
/// positions `p0..p1`) into its output plane `ym`.
fn col2im_rows<T: GemmScalar>(g: &ConvGeom, col: &[T], p0: usize, p1: usize, ym: &mut [T]) {
    let cols = p1 - p0;
    let [od, oh, ow] = g.output;
    let [_, ih, iw] = g.input;
    let [kd, kh, kw] = g.kernel;
    let [s0, s1, s2] = g.stride;
    let [d0, d1, d2] = g.dilation;
    let [q0, q1, q2] = g.pad;
    let mut row = 0;
    for a in 0..kd {
        for b in 0..kh {
            for e in 0..kw {
                let src = &col[row * cols..(row + 1) * cols];
                row += 1;
                let off2 = (e * d2) as isize - q2;
                let mut p = p0;
                while p < p1 {
                    let ix0 = p % iw;
                    let rest = p / iw;
                    let iy = rest % ih;
                    let iz = rest / ih;
                    let end = (p - ix0 + iw).min(p1);
                    let seg = &src[p - p0..end - p0];
                    p = end;
                    let z = in_coord(iz, a, s0, d0, q0);
                    let yy = in_coord(iy, b, s1, d1, q1);
                    if z < 0 || z >= od as isize || yy < 0 || yy >= oh as isize {
                        continue;
                    }
                    let line = &mut ym[(z as usize * oh + yy as usize) * ow..][..ow];
                    let (lo, hi) = valid_range(ix0 + seg.len(), ow, s2, off2);
                    let (lo, hi) = (lo.max(ix0), hi.max(ix0));
                    for ix in lo..hi {
                        let ox = ((ix * s2) as isize + off2) as usize;
                        line[ox] += seg[ix - ix0];
                    }
                }
            }
        }
    }
}

/// Direct 7-loop convolution, the reference the fast paths are tested against.
pub fn conv_reference<T: GemmScalar>(g: &ConvGeom, x: &[T], w: &[T], bias: Option<&[T]>, y: &mut [T]) {
    let (in_size, out_size, ks) = (g.in_size(), g.out_size(), g.kernel_size());
    let (cin_g, cout_g) = (g.in_per_group(), g.out_per_group());
    for n in 0..g.batch {
        for m in 0..g.out_channels {
            let gi = m / cout_g.max(1);
            for o in 0..out_size {
                let o3 = [o / (g.output[1] * g.output[2]), (o / g.output[2]) % g.output[1], o % g.output[2]];
                let mut acc = bias.map_or(0.0, |b| b[m].to_f64());
                for c in 0..cin_g {
                    let ci = gi * cin_g + c;
                    for k in 0..ks {
                        let k3 = [k / (g.kernel[1] * g.kernel[2]), (k / g.kernel[2]) % g.kernel[1], k % g.kernel[2]];
                        let mut idx = 0usize;
                        let mut ok = true;
                        for d in 0..3 {
                            let i = in_coord(o3[d], k3[d], g.stride[d], g.dilation[d], g.pad[d]);
                            if i < 0 || i >= g.input[d] as isize {
                                ok = false;
                                break;
                            }
                            idx = idx * g.input[d] + i as usize;
                        }
                        if ok {
                            acc += x[(n * g.in_channels + ci) * in_size + idx].to_f64()
                                * w[(m * cin_g + c) * ks + k].to_f64();
                        }
                    }
                }
                y[(n * g.out_channels + m) * out_size + o] = T::from_f64(acc);
            }
        }
    }
}

/// Direct transposed convolution (scatter form), the reference for
/// [`conv_transpose`].
pub fn conv_transpose_reference<T: GemmScalar>(g: &ConvGeom, x: &[T], w: &[T], bias: Option<&[T]>, y: &mut [T]) {
    let (in_size, out_size, ks) = (g.in_size(), g.out_size(), g.kernel_size());
    let (cin_g, cout_g) = (g.in_per_group(), g.out_per_group());
    let mut acc = vec![0.0f64; g.batch * g.out_channels * out_size];
    for n in 0..g.batch {
        for c in 0..g.in_channels {
            let gi = c / cin_g;
            for i in 0..in_size {
                let i3 = [i / (g.input[1] * g.input[2]), (i / g.input[2]) % g.input[1], i % g.input[2]];
                let xv = x[(n * g.in_channels + c) * in_size + i].to_f64();
                for mm in 0..cout_g {
                    let m = gi * cout_g + mm;
                    for k in 0..ks {
                        let k3 = [k / (g.kernel[1] * g.kernel[2]), (k / g.kernel[2]) % g.kernel[1], k % g.kernel[2]];
                        let mut idx = 0usize;
                        let mut ok = true;
                        for d in 0..3 {
                            let o = in_coord(i3[d], k3[d], g.stride[d], g.dilation[d], g.pad[d]);
                            if o < 0 || o >= g.output[d] as isize {
                                ok = false;
                                break;
                            }
                            idx = idx * g.output[d] + o as usize;
                        }
                        if ok {
                            acc[(n * g.out_channels + m) * out_size + idx] +=
                                xv * w[(c * cout_g + mm) * ks + k].to_f64();
                        }
                    }
                }
            }
        }
    }
    for (i, v) in acc.iter().enumerate() {
        let m = (i / out_size.max(1)) % g.out_channels;
        y[i] = T::from_f64(v + bias.map_or(0.0, |b| b[m].to_f64()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    fn out_len(i: usize, k: usize, s: usize, d: usize, pb: usize, pe: usize) -> Option<usize> {
        let span = (k - 1) * d + 1;
        let padded = i + pb + pe;
        if padded < span {
            None
        } else {
            Some((padded - span) / s + 1)
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn geom(
        n: usize,
        cg: usize,
        mg: usize,
        groups: usize,
        sp: &[(usize, usize, usize, usize, usize, usize)],
        transpose: bool,
    ) -> Option<ConvGeom> {
        let mut g = ConvGeom {
            batch: n,
            in_channels: cg * groups,
            out_channels: mg * groups,
            groups,
            input: [1; 3],
            output: [1; 3],
            kernel: [1; 3],
            stride: [1; 3],
            pad: [0; 3],
            dilation: [1; 3],
        };
        let off = 3 - sp.len();
        for (d, &(i, k, s, dil, pb, pe)) in sp.iter().enumerate() {
            g.input[off + d] = i;
            g.kernel[off + d] = k;
            g.stride[off + d] = s;
            g.dilation[off + d] = dil;
            g.pad[off + d] = pb as isize;
            g.output[off + d] = if transpose {
                let o = s * (i - 1) + (k - 1) * dil + 1;
                o.checked_sub(pb + pe).filter(|&o| o > 0)?
            } else {
                out_len(i, k, s, dil, pb, pe)?
            };
        }
        Some(g)
    }

    fn dim() -> impl Strategy<Value = (usize, usize, usize, usize, usize, usize)> {
        (1usize..9, 1usize..4, 1usize..4, 1usize..3, 0usize..3, 0usize..3)
    }

    fn check(a: &[f32], b: &[f32], k: usize) -> Result<(), TestCaseError> {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            prop_assert!((x - y).abs() <= 1e-4 * (k as f32).sqrt().max(1.0), "at {}: {} vs {}", i, x, y);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(160))]
        #[test]
        fn conv_matches_direct(
            n in 1usize..3, cg in 1usize..4, mg in 1usize..4, groups in 1usize..4,
            sp in prop::collection::vec(dim(), 1..4), bias in any::<bool>(), seed in any::<u64>(),
            depthwise in any::<bool>(),
        ) {
            let (cg, groups) = if depthwise { (1, groups + 1) } else { (cg, groups) };
            let Some(g) = geom(n, cg, mg, groups, &sp, false) else { return Ok(()) };
            let x = rand_vec(n * g.in_channels * g.in_size(), seed);
            let w = rand_vec(g.out_channels * cg * g.kernel_size(), seed ^ 3);
            let b = rand_vec(g.out_channels, seed ^ 5);
            let bias = if bias { Some(&b[..]) } else { None };
            let mut y1 = vec![f32::NAN; n * g.out_channels * g.out_size()];
            let mut y2 = y1.clone();
            conv_forward(&g, &x, &w, bias, &mut y1);
            conv_reference(&g, &x, &w, bias, &mut y2);
            check(&y1, &y2, cg * g.kernel_size())?;
        }

        #[test]
        fn pointwise_and_large_conv_match_direct(
            n in 1usize..3, cg in 1usize..40, mg in 1usize..20, groups in 1usize..3,
            h in 1usize..30, w_ in 1usize..30, k in 1usize..4, seed in any::<u64>(),
        ) {
            let Some(g) = geom(n, cg, mg, groups, &[(h, k, 1, 1, k / 2, k / 2), (w_, k, 1, 1, k / 2, k / 2)], false)
                else { return Ok(()) };
            let x = rand_vec(n * g.in_channels * g.in_size(), seed);
            let w = rand_vec(g.out_channels * cg * g.kernel_size(), seed ^ 3);
            let b = rand_vec(g.out_channels, seed ^ 5);
            let mut y1 = vec![f32::NAN; n * g.out_channels * g.out_size()];
            let mut y2 = y1.clone();
            conv_forward(&g, &x, &w, Some(&b), &mut y1);
            conv_reference(&g, &x, &w, Some(&b), &mut y2);
            check(&y1, &y2, cg * g.kernel_size())?;
        }

        #[test]
        fn conv_transpose_matches_direct(
            n in 1usize..3, cg in 1usize..4, mg in 1usize..4, groups in 1usize..3,
            sp in prop::collection::vec(dim(), 1..4), bias in any::<bool>(), seed in any::<u64>(),
        ) {
            let Some(g) = geom(n, cg, mg, groups, &sp, true) else { return Ok(()) };
            let x = rand_vec(n * g.in_channels * g.in_size(), seed);
            let w = rand_vec(g.in_channels * mg * g.kernel_size(), seed ^ 3);
            let b = rand_vec(g.out_channels, seed ^ 5);
            let bias = if bias { Some(&b[..]) } else { None };
            let mut y1 = vec![f32::NAN; n * g.out_channels * g.out_size()];
            let mut y2 = y1.clone();
            conv_transpose(&g, &x, &w, bias, &mut y1);
            conv_transpose_reference(&g, &x, &w, bias, &mut y2);
            check(&y1, &y2, cg * g.kernel_size())?;
        }
    }

    proptest! {
        /// im2row (positions x taps) is im2col (taps x positions)
        /// transposed, on random geometries: borders, strides, dilations,
        /// asymmetric padding, 1 to 3 spatial dimensions, a range of
        /// positions that starts and ends mid-row; the buffers start stale.
        #[test]
        fn im2row_is_im2col_transposed(
            sp in proptest::collection::vec((1usize..9, 1usize..4, 1usize..3, 1usize..3, 0usize..3, 0usize..3), 1..=3),
            c in 1usize..4, cut in 0usize..7,
        ) {
            let Some(g) = geom(1, c, 1, 1, &sp, false) else { return Ok(()) };
            let x: Vec<f32> = (0..c * g.in_size()).map(|v| v as f32 + 1.0).collect();
            let ck = c * g.kernel_size();
            let out = g.out_size();
            let p0 = cut.min(out - 1);
            let p1 = out.saturating_sub(cut / 2).max(p0 + 1);
            let mut col = vec![f32::NAN; ck * (p1 - p0)];
            let mut row = vec![-7.0; ck * (p1 - p0)];
            im2col(&g, &x, c, p0, p1, &mut col);
            im2row(&g, &x, c, p0, p1, &mut row);
            for r in 0..ck {
                for p in 0..p1 - p0 {
                    prop_assert_eq!(col[r * (p1 - p0) + p], row[p * ck + r], "tap {} position {}", r, p0 + p);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn byte_transpose_matches_the_generic_one(
            c in 1usize..40, positions in 1usize..300, seed in any::<u64>(),
        ) {
            let mut s = seed | 1;
            let x: Vec<u8> = (0..c * positions).map(|_| { s ^= s << 13; s ^= s >> 7; s ^= s << 17; s as u8 }).collect();
            let (mut want, mut got) = (vec![0u8; x.len()], vec![1u8; x.len()]);
            to_channels_last(&x, c, positions, &mut want);
            bytes_to_channels_last(&x, c, positions, &mut got);
            prop_assert_eq!(got, want);
        }

        /// im2row from a channels-last image holds the same taps as im2row
        /// from the channels-first one, its columns in (tap, channel) order
        /// instead of (channel, tap), with the padding value where a tap
        /// falls outside; on random geometries (borders, strides, dilations,
        /// 1 to 3 spatial dimensions, ranges starting mid-row, channel
        /// counts past the transpose's 32-wide blocks); stale buffers.
        #[test]
        fn channels_last_im2row_permutes_the_columns(
            sp in proptest::collection::vec((1usize..9, 1usize..4, 1usize..3, 1usize..3, 0usize..3, 0usize..3), 1..=3),
            c in prop::sample::select(vec![1usize, 2, 3, 5, 33, 40]), cut in 0usize..7,
        ) {
            let Some(g) = geom(1, c, 1, 1, &sp, false) else { return Ok(()) };
            let x: Vec<u16> = (0..c * g.in_size()).map(|v| v as u16 + 1).collect();
            let mut last = vec![7u16; x.len()];
            to_channels_last(&x, c, g.in_size(), &mut last);
            for (p, row) in last.chunks(c).enumerate() {
                for (ch, &v) in row.iter().enumerate() {
                    prop_assert_eq!(v, x[ch * g.in_size() + p]);
                }
            }
            let (taps, out) = (g.kernel_size(), g.out_size());
            let ck = c * taps;
            let p0 = cut.min(out - 1);
            let p1 = out.saturating_sub(cut / 2).max(p0 + 1);
            let mut first = vec![9u16; ck * (p1 - p0)];
            let mut rows = vec![9u16; ck * (p1 - p0)];
            im2row_padded(&g, &x, c, p0, p1, &mut first, 0);
            im2row_channels_last(&g, &last, c, p0, p1, &mut rows, 0);
            for p in 0..p1 - p0 {
                for ch in 0..c {
                    for t in 0..taps {
                        prop_assert_eq!(
                            rows[p * ck + t * c + ch], first[p * ck + ch * taps + t],
                            "position {} channel {} tap {}", p0 + p, ch, t
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn small_conv_by_hand() {
        // 1x1x3x3 input 0..9, 2x2 kernel of ones, pad 1 on the top/left only.
        let g = ConvGeom {
            batch: 1,
            in_channels: 1,
            out_channels: 1,
            groups: 1,
            input: [1, 3, 3],
            output: [1, 3, 3],
            kernel: [1, 2, 2],
            stride: [1, 1, 1],
            pad: [0, 1, 1],
            dilation: [1, 1, 1],
        };
        let x: Vec<f32> = (0..9).map(|v| v as f32).collect();
        let mut y = vec![0.0; 9];
        conv_forward(&g, &x, &[1.0; 4], Some(&[0.5]), &mut y);
        assert_eq!(y, vec![0.5, 1.5, 3.5, 3.5, 8.5, 12.5, 9.5, 20.5, 24.5]);
    }
}
