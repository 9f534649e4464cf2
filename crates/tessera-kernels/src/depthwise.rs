//! Depthwise convolution (one input channel per group) over a padded copy
//! of each input plane.
//!
//! Each input plane is first copied, once, into a buffer that holds exactly
//! the region the kernel reads, with the padding written as zeros and the
//! columns split by stride phase (column `x` goes to phase `x % stride`,
//! slot `x / stride`). Every kernel tap of every output row is then one
//! contiguous run of that buffer at a fixed offset, so an output row is a
//! sum of `kernel_size` shifted rows with no bounds logic inside the loop,
//! kept in registers across all taps and stored once. (The direct loop in
//! `conv` walks the valid part of every tap separately and reads and writes
//! the output row once per tap.)
//!
//! The same loop serves 8-bit convolutions: with the bytes minus their zero
//! point converted to f32, and the kernel's absolute weights summing to at
//! most 2^24 / 255, every product and partial sum is an integer of
//! magnitude at most 2^24, which f32 holds exactly, so the sums equal the
//! integer ones bit for bit.

use rayon::prelude::*;

use crate::conv::{valid_range, ConvGeom};
use crate::gemm::GemmScalar as _;

/// The most values a padded plane may hold (8 MiB of f32; with its output
/// plane, a thread's scratch stays within about 16 MiB, which the thread
/// keeps for reuse): beyond it the caller keeps the direct loop, which needs no
/// copy.
const MAX_PADDED: usize = 1 << 21;

/// Output values per block of the row loop: 4 vectors of 16 f32, enough
/// independent sums to hide the adds' latency.
const BLOCK: usize = 64;

/// Where each kernel tap of a depthwise convolution reads in the padded,
/// phase-split plane.
#[derive(Clone, Debug)]
pub struct DepthwisePlan {
    g: ConvGeom,
    /// Padded extents: depth, height, and width in slots of one phase.
    pz: usize,
    py: usize,
    slots: usize,
    /// Offset of each tap `(a, b, e)` (ONNX weight order) from its output
    /// row's start.
    taps: Vec<usize>,
    /// Per stride phase, which slots of a padded row hold input columns
    /// (the same for every row): first slot, slot count, first input column.
    spans: Vec<(usize, usize, usize)>,
}

impl DepthwisePlan {
    /// The plan for `g`, or `None` when `g` is not depthwise, has no output
    /// (channels or positions), a zero stride or dilation, or a padded plane
    /// that would exceed [`MAX_PADDED`] values.
    pub fn new(g: &ConvGeom) -> Option<DepthwisePlan> {
        if g.groups != g.in_channels
            || g.groups == 0
            || g.out_channels == 0
            || g.out_size() == 0
            || g.kernel_size() == 0
            || g.stride.contains(&0)
            || g.dilation.contains(&0)
        {
            return None;
        }
        let extent = |o: usize, k: usize, s: usize, d: usize| -> Option<usize> {
            (o - 1).checked_mul(s)?.checked_add((k - 1).checked_mul(d)?)?.checked_add(1)
        };
        let [od, oh, ow] = g.output;
        let [kd, kh, kw] = g.kernel;
        let [s0, s1, s2] = g.stride;
        let [d0, d1, d2] = g.dilation;
        let pz = extent(od, kd, s0, d0)?;
        let py = extent(oh, kh, s1, d1)?;
        let slots = extent(ow, kw, s2, d2)?.div_ceil(s2);
        let phase = pz.checked_mul(py)?.checked_mul(slots)?;
        if phase.checked_mul(s2)? > MAX_PADDED {
            return None;
        }
        let mut taps = Vec::with_capacity(g.kernel_size());
        for a in 0..kd {
            for b in 0..kh {
                for e in 0..kw {
                    let col = e * d2;
                    taps.push((col % s2) * phase + (a * d0 * py + b * d1) * slots + col / s2);
                }
            }
        }
        let spans = (0..s2)
            .map(|p| {
                let off = p as isize - g.pad[2];
                let (lo, hi) = valid_range(slots, g.input[2], s2, off);
                (lo, hi - lo, ((lo * s2) as isize + off).max(0) as usize)
            })
            .collect();
        Some(DepthwisePlan { g: g.clone(), pz, py, slots, taps, spans })
    }

    /// Values in one padded plane.
    pub fn padded_len(&self) -> usize {
        self.pz * self.py * self.slots * self.g.stride[2]
    }

    /// Scratch values a plane needs: its padded copy plus the slack that
    /// lets a row's last, partial block be read as a whole one.
    fn scratch_len(&self) -> usize {
        self.padded_len() + 16
    }
}

/// The input of a depthwise convolution, `[N, C, in...]`: f32 values, or
/// 8-bit ones (their bit patterns) read as `value - zero`.
#[derive(Clone, Copy, Debug)]
pub enum PlaneSource<'a> {
    F32(&'a [f32]),
    U8 { bytes: &'a [u8], zero: i32 },
    I8 { bytes: &'a [u8], zero: i32 },
}

impl<'a> PlaneSource<'a> {
    fn len(&self) -> usize {
        match self {
            PlaneSource::F32(v) => v.len(),
            PlaneSource::U8 { bytes, .. } | PlaneSource::I8 { bytes, .. } => bytes.len(),
        }
    }

    fn range(&self, at: usize, len: usize) -> PlaneSource<'a> {
        match *self {
            PlaneSource::F32(v) => PlaneSource::F32(&v[at..][..len]),
            PlaneSource::U8 { bytes, zero } => PlaneSource::U8 { bytes: &bytes[at..][..len], zero },
            PlaneSource::I8 { bytes, zero } => PlaneSource::I8 { bytes: &bytes[at..][..len], zero },
        }
    }
}

/// Copies input plane `src` into `dst` (at least [`padded_len`] values),
/// the padding as zeros.
///
/// [`padded_len`]: DepthwisePlan::padded_len
pub fn pad_plane(plan: &DepthwisePlan, src: PlaneSource, dst: &mut [f32]) {
    with_vector_features!(pad_plane_body(plan: &DepthwisePlan, src: PlaneSource, dst: &mut [f32]))
}

#[inline(always)]
fn pad_plane_body<const FMA: bool>(plan: &DepthwisePlan, src: PlaneSource, dst: &mut [f32]) {
    match src {
        PlaneSource::F32(v) => pad_with(plan, v, |x| x, dst),
        PlaneSource::U8 { bytes, zero } => pad_with(plan, bytes, |b| (b as i32 - zero) as f32, dst),
        PlaneSource::I8 { bytes, zero } => pad_with(plan, bytes, |b| (b as i8 as i32 - zero) as f32, dst),
    }
}

#[inline(always)]
fn pad_with<S: Copy>(plan: &DepthwisePlan, src: &[S], cvt: impl Fn(S) -> f32, dst: &mut [f32]) {
    let [id, ih, iw] = plan.g.input;
    let [q0, q1, _] = plan.g.pad;
    let (s2, slots, py) = (plan.g.stride[2], plan.slots, plan.py);
    let phase = plan.pz * py * slots;
    let src = &src[..id * ih * iw];
    let dst = &mut dst[..phase * s2];
    for z in 0..plan.pz {
        let iz = z as isize - q0;
        for y in 0..py {
            let iy = y as isize - q1;
            let inside = (0..id as isize).contains(&iz) && (0..ih as isize).contains(&iy);
            for (p, &(lo, n, x0)) in plan.spans.iter().enumerate() {
                let row = &mut dst[p * phase + (z * py + y) * slots..][..slots];
                if !inside || n == 0 {
                    row.fill(0.0);
                    continue;
                }
                let line = &src[(iz as usize * ih + iy as usize) * iw..][..iw];
                row[..lo].fill(0.0);
                row[lo + n..].fill(0.0);
                let (out, from) = (&mut row[lo..lo + n], &line[x0..x0 + (n - 1) * s2 + 1]);
                // Whole chunks of a constant stride, so the gathers
                // vectorize (an indexed loop keeps a bounds check per value).
                let (head, last) = out.split_at_mut(n - 1);
                match s2 {
                    1 => head.iter_mut().zip(from).for_each(|(d, &v)| *d = cvt(v)),
                    2 => head.iter_mut().zip(from.chunks_exact(2)).for_each(|(d, c)| *d = cvt(c[0])),
                    _ => head.iter_mut().zip(from.chunks_exact(s2)).for_each(|(d, c)| *d = cvt(c[0])),
                }
                last[0] = cvt(from[(n - 1) * s2]);
            }
        }
    }
}

/// One output plane: `y[o] = bias + sum_k w[k] * xpad[tap_k(o)]`, taps
/// added in weight order (a multiply, then an add: the order and rounding
/// of the direct loop in `conv`, so the same values for finite weights; a
/// tap in the padding adds `w * 0`, which the direct loop skips, so an
/// infinite or NaN weight gives NaN there, as a zero-padded im2col does).
/// `xpad` is a padded plane followed by 16 values of slack (any contents).
pub fn run_plane(plan: &DepthwisePlan, xpad: &[f32], w: &[f32], bias: f32, y: &mut [f32]) {
    with_vector_features!(run_plane_body(plan: &DepthwisePlan, xpad: &[f32], w: &[f32], bias: f32, y: &mut [f32]))
}

/// `N` outputs starting at `at` of the row whose taps start at `row`.
#[inline(always)]
fn block<const N: usize>(taps: &[usize], w: &[f32], xpad: &[f32], row: usize, at: usize, bias: f32) -> [f32; N] {
    let mut acc = [bias; N];
    for (&t, &wv) in taps.iter().zip(w) {
        let src: &[f32; N] = xpad[row + t + at..][..N].try_into().expect("a block");
        for j in 0..N {
            acc[j] += wv * src[j];
        }
    }
    acc
}

#[inline(always)]
fn run_plane_body<const FMA: bool>(plan: &DepthwisePlan, xpad: &[f32], w: &[f32], bias: f32, y: &mut [f32]) {
    let [od, oh, ow] = plan.g.output;
    let [s0, s1, _] = plan.g.stride;
    let taps = &plan.taps;
    let w = &w[..taps.len()];
    let xpad = &xpad[..plan.scratch_len()];
    let y = &mut y[..od * oh * ow];
    for oz in 0..od {
        for oy in 0..oh {
            let row = (oz * s0 * plan.py + oy * s1) * plan.slots;
            let yr = &mut y[(oz * oh + oy) * ow..][..ow];
            let mut o = 0;
            while o + BLOCK <= ow {
                yr[o..o + BLOCK].copy_from_slice(&block::<BLOCK>(taps, w, xpad, row, o, bias));
                o += BLOCK;
            }
            while o < ow {
                // The last block may run past the row (into the next row,
                // or the slack after the plane); only its valid part is kept.
                let n = (ow - o).min(16);
                yr[o..o + n].copy_from_slice(&block::<16>(taps, w, xpad, row, o, bias)[..n]);
                o += n;
            }
        }
    }
}

/// Input planes per parallel task: enough multiply-adds (about 2^15) to
/// pay for the task when planes are small (deep layers at 7x7).
fn planes_per_task(g: &ConvGeom) -> usize {
    let work = (g.out_per_group() * g.out_size() * g.kernel_size()).max(1);
    ((1usize << 15) / work).clamp(1, 64)
}

/// Depthwise convolution of `x` (`[N, C, in...]`) with weights `w`
/// (`[C * mult, k...]`, `mult` outputs per input channel) and
/// per-output-channel `bias`, into `y` (`[N, C * mult, out...]`), over the
/// rayon pool. Each output plane's values go to `emit(plane_index, sums,
/// out)` (`plane_index` counts output planes over the batch, `out` is that
/// plane of `y`).
pub fn depthwise_planes<O: Send>(
    plan: &DepthwisePlan,
    x: PlaneSource,
    w: &[f32],
    bias: impl Fn(usize) -> f32 + Sync,
    y: &mut [O],
    emit: impl Fn(usize, &[f32], &mut [O]) + Sync,
) {
    let g = &plan.g;
    let (in_size, out_size, ks, mult) = (g.in_size(), g.out_size(), g.kernel_size(), g.out_per_group());
    let planes = g.batch * g.in_channels;
    assert!(x.len() >= planes * in_size, "depthwise input too small");
    assert!(w.len() >= g.out_channels * ks, "depthwise weights too small");
    assert!(y.len() >= planes * mult * out_size, "depthwise output too small");
    let y = &mut y[..planes * mult * out_size];
    if y.is_empty() {
        return;
    }
    let per_task = planes_per_task(g);
    let scratch = plan.scratch_len();
    let task = |t: usize, yt: &mut [O]| {
        f32::with_scratch(scratch + out_size, |buf| {
            let (xpad, sums) = buf.split_at_mut(scratch);
            for (i, yc) in yt.chunks_mut(mult * out_size).enumerate() {
                let plane = t * per_task + i;
                let c = plane % g.in_channels;
                pad_plane(plan, x.range(plane * in_size, in_size), xpad);
                for (j, yp) in yc.chunks_mut(out_size).enumerate() {
                    let m = c * mult + j;
                    run_plane(plan, xpad, &w[m * ks..][..ks], bias(m), sums);
                    emit(plane * mult + j, sums, yp);
                }
            }
        })
    };
    if planes <= per_task {
        task(0, y);
    } else {
        y.par_chunks_mut(per_task * mult * out_size).enumerate().for_each(|(t, yt)| task(t, yt));
    }
}

/// Whether 8-bit depthwise sums are exact in f32: every partial sum of a
/// kernel's products is at most `255 * sum |w|`, which must stay within
/// f32's 24-bit integers. `w` holds the weights minus their zero points,
/// `ks` per output channel.
pub fn int8_sums_exact_in_f32(w: &[i16], ks: usize) -> bool {
    w.chunks(ks.max(1)).all(|k| k.iter().map(|&v| (v as i64).abs()).sum::<i64>() * 255 <= 1 << 24)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::{conv_reference, depthwise_direct};
    use proptest::prelude::*;

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// One spatial dimension: size, kernel, stride, dilation, leading and
    /// trailing padding.
    type Dim = (usize, usize, usize, usize, usize, usize);

    /// A depthwise geometry over up to three spatial dimensions (leading
    /// ones of size 1 when fewer are given).
    fn geom(n: usize, c: usize, mult: usize, dims: &[Dim]) -> Option<ConvGeom> {
        let mut g = ConvGeom {
            batch: n,
            in_channels: c,
            out_channels: c * mult,
            groups: c,
            input: [1; 3],
            output: [1; 3],
            kernel: [1; 3],
            stride: [1; 3],
            pad: [0; 3],
            dilation: [1; 3],
        };
        for (i, &(size, k, s, d, pb, pe)) in dims.iter().enumerate() {
            let a = 3 - dims.len() + i;
            let span = (k - 1) * d + 1;
            g.input[a] = size;
            g.output[a] = (size + pb + pe).checked_sub(span)? / s + 1;
            (g.kernel[a], g.stride[a], g.dilation[a], g.pad[a]) = (k, s, d, pb as isize);
        }
        Some(g)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Wide rows (the 64- and 16-value blocks and the ragged tail), 1 to
        /// 3 spatial dimensions, strides and dilations up to 3, paddings on
        /// every side, channel multipliers: the padded loop equals the
        /// direct loop bit for bit (same order and rounding) and the plain
        /// reference closely.
        #[test]
        fn padded_depthwise_matches_direct(
            n in 1usize..3, c in 1usize..5, mult in 1usize..3, w_ in 1usize..150,
            outer in prop::collection::vec((1usize..8, 1usize..4, 1usize..4, 1usize..4, 0usize..3, 0usize..3), 0..=2),
            kw in 1usize..5, sw in 1usize..4, dw in 1usize..4, pw in (0usize..3, 0usize..3),
            bias in any::<bool>(), seed in any::<u64>(),
        ) {
            let mut dims = outer.clone();
            dims.push((w_, kw, sw, dw, pw.0, pw.1));
            let Some(g) = geom(n, c, mult, &dims) else { return Ok(()) };
            let plan = DepthwisePlan::new(&g).expect("small planes fit");
            let x = rand_vec(n * c * g.in_size(), seed);
            let w = rand_vec(g.out_channels * g.kernel_size(), seed ^ 3);
            let b = rand_vec(g.out_channels, seed ^ 5);
            let bias_of = |m: usize| if bias { b[m] } else { 0.0 };
            let mut y1 = vec![f32::NAN; n * g.out_channels * g.out_size()];
            let (mut y2, mut y3) = (y1.clone(), y1.clone());
            depthwise_planes(&plan, PlaneSource::F32(&x), &w, bias_of, &mut y1, |_, s, o| o.copy_from_slice(s));
            depthwise_direct(&g, &x, &w, bias.then_some(&b[..]), &mut y2);
            conv_reference(&g, &x, &w, bias.then_some(&b[..]), &mut y3);
            for (i, ((a, b), r)) in y1.iter().zip(&y2).zip(&y3).enumerate() {
                prop_assert_eq!(a.to_bits(), b.to_bits(), "at {}: {} vs direct {}", i, a, b);
                prop_assert!((a - r).abs() <= 1e-4 * (g.kernel_size() as f32).sqrt(), "at {}: {} vs {}", i, a, r);
            }
        }

        /// 8-bit inputs and weights through f32: the sums equal the integer
        /// ones exactly, emitted plane by plane in order, for both byte
        /// types and channel multipliers.
        #[test]
        fn int8_depthwise_sums_are_exact(
            c in 1usize..4, mult in 1usize..3, h in 1usize..10, w_ in 1usize..90, k in (1usize..4, 1usize..4),
            s in (1usize..3, 1usize..3), p in (0usize..2, 0usize..2, 0usize..2, 0usize..2),
            zp in 0u8..=255, signed in any::<bool>(), seed in any::<u64>(),
        ) {
            let dims = [(h, k.0, s.0, 1, p.0, p.1), (w_, k.1, s.1, 1, p.2, p.3)];
            let Some(g) = geom(2, c, mult, &dims) else { return Ok(()) };
            let plan = DepthwisePlan::new(&g).expect("small planes fit");
            let xb: Vec<u8> = rand_vec(2 * c * g.in_size(), seed).iter().map(|v| ((v + 1.0) * 127.9) as u8).collect();
            let w16: Vec<i16> = rand_vec(c * mult * g.kernel_size(), seed ^ 3).iter().map(|v| (v * 255.0) as i16).collect();
            let wf: Vec<f32> = w16.iter().map(|&v| v as f32).collect();
            let mut got = vec![i32::MIN; 2 * c * mult * g.out_size()];
            // The zero point as the input's type reads it.
            let (src, zero) = if signed {
                (PlaneSource::I8 { bytes: &xb, zero: zp as i8 as i32 }, zp as i8 as f64)
            } else {
                (PlaneSource::U8 { bytes: &xb, zero: zp as i32 }, zp as f64)
            };
            depthwise_planes(&plan, src, &wf, |_| 0.0, &mut got, |_, s, o| {
                for (o, &v) in o.iter_mut().zip(s) { *o = v as i32; }
            });
            let xi: Vec<f64> =
                xb.iter().map(|&v| if signed { v as i8 as f64 } else { v as f64 } - zero).collect();
            let wi: Vec<f64> = w16.iter().map(|&v| v as f64).collect();
            let mut want = vec![0f64; got.len()];
            conv_reference(&g, &xi, &wi, None, &mut want);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                prop_assert_eq!(*a as f64, *b, "at {}", i);
            }
        }
    }

    /// At the bound: every input 255 steps from its zero point and the
    /// kernel's absolute weights summing to exactly 65793, so the interior
    /// sums are +-(2^24 - 1): still exact.
    #[test]
    fn int8_sums_at_the_bound_are_exact() {
        let g = geom(1, 1, 1, &[(20, 17, 1, 1, 0, 0), (20, 16, 1, 1, 0, 0)]).expect("geometry");
        let ks = g.kernel_size();
        // 258 taps of 255 and one of 3 (65793), the other 13 zero.
        let mut w16 = vec![0i16; ks];
        w16[..258].fill(255);
        w16[258] = 3;
        assert!(int8_sums_exact_in_f32(&w16, ks));
        let plan = DepthwisePlan::new(&g).expect("small plane");
        let wf: Vec<f32> = w16.iter().map(|&v| v as f32).collect();
        for (byte, zero, sign) in [(255u8, 0, 1i64), (0, 255, -1)] {
            let xb = vec![byte; g.in_size()];
            let mut got = vec![0i64; g.out_size()];
            depthwise_planes(
                &plan,
                PlaneSource::U8 { bytes: &xb, zero },
                &wf,
                |_| 0.0,
                &mut got,
                |_, s, o| {
                    for (o, &v) in o.iter_mut().zip(s) {
                        *o = v as i64;
                    }
                },
            );
            assert!(got.iter().all(|&v| v == sign * 255 * 65793), "{:?}", &got[..4]);
        }
    }

    #[test]
    fn exactness_bound_is_the_24_bit_limit() {
        // 255 * 65793 = 16777215 < 2^24; one more step crosses it.
        let ks = 259;
        let mut w = vec![255i16; ks];
        w[258] = 3;
        assert!(int8_sums_exact_in_f32(&w, ks));
        w[258] = -4;
        assert!(!int8_sums_exact_in_f32(&w, ks));
    }

    #[test]
    fn oversized_padding_keeps_the_direct_loop() {
        let g = ConvGeom {
            batch: 1,
            in_channels: 1,
            out_channels: 1,
            groups: 1,
            input: [1, 1, 1],
            output: [1, 5000, 5000],
            kernel: [1, 1, 1],
            stride: [1, 1, 1],
            pad: [0, 2500, 2500],
            dilation: [1, 1, 1],
        };
        assert!(DepthwisePlan::new(&g).is_none());
        let small = ConvGeom { output: [1, 1400, 1400], pad: [0, 700, 700], ..g };
        assert_eq!(DepthwisePlan::new(&small).map(|p| p.padded_len()), Some(1_960_000));
    }
}
