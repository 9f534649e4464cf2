//! Max, average and Lp pooling over `[planes, D, H, W]` in the same
//! canonical 3-D form as the convolutions (1-D and 2-D problems get leading
//! dimensions of size 1).

use rayon::prelude::*;

use crate::conv::valid_range;
use crate::gemm::GemmScalar;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolGeom {
    /// Batch times channels.
    pub planes: usize,
    pub input: [usize; 3],
    pub output: [usize; 3],
    pub kernel: [usize; 3],
    pub stride: [usize; 3],
    pub pad: [usize; 3],
    /// Trailing padding (only the average's `count_include_pad` divisor uses it).
    pub pad_end: [usize; 3],
    pub dilation: [usize; 3],
}

/// Per output coordinate of one dimension: first input coordinate of the
/// window, valid taps `lo..hi`, and the number of taps inside the padded
/// extent (for `count_include_pad`).
#[derive(Copy, Clone, Debug)]
struct Win {
    start: isize,
    lo: usize,
    hi: usize,
    padded: usize,
}

fn windows(g: &PoolGeom, d: usize) -> Vec<Win> {
    (0..g.output[d])
        .map(|o| {
            let start = (o * g.stride[d]) as isize - g.pad[d] as isize;
            let (lo, hi) = valid_range(g.kernel[d], g.input[d], g.dilation[d], start);
            let ext = g.input[d] + g.pad[d] + g.pad_end[d];
            let (plo, phi) = valid_range(g.kernel[d], ext, g.dilation[d], start + g.pad[d] as isize);
            Win { start, lo, hi, padded: phi - plo }
        })
        .collect()
}

impl PoolGeom {
    fn in_size(&self) -> usize {
        self.input.iter().product()
    }
    fn out_size(&self) -> usize {
        self.output.iter().product()
    }
    fn validate_slices(&self, x: usize, y: usize) {
        assert!(self.stride.iter().chain(&self.dilation).all(|&v| v > 0), "pool strides/dilations must be positive");
        assert!(x >= self.planes * self.in_size(), "pool input too small");
        assert!(y >= self.planes * self.out_size(), "pool output too small");
    }
}

/// Runs `f(plane, window_taps, out)` for every output element; the closure
/// gets the three per-dimension windows.
fn for_each_output<T: Send>(g: &PoolGeom, y: &mut [T], f: impl Fn(usize, [Win; 3], &mut T) + Sync) {
    let wins = [windows(g, 0), windows(g, 1), windows(g, 2)];
    let out_size = g.out_size();
    let [od, oh, ow] = g.output;
    let plane = |p: usize, yp: &mut [T]| {
        let mut i = 0;
        for z in 0..od {
            for yy in 0..oh {
                for x in 0..ow {
                    f(p, [wins[0][z], wins[1][yy], wins[2][x]], &mut yp[i]);
                    i += 1;
                }
            }
        }
    };
    let y = &mut y[..g.planes * out_size];
    if out_size == 0 {
        return;
    }
    let work = y.len() * g.kernel.iter().product::<usize>();
    if work < (1 << 15) {
        y.chunks_mut(out_size).enumerate().for_each(|(p, yp)| plane(p, yp));
    } else {
        y.par_chunks_mut(out_size).enumerate().for_each(|(p, yp)| plane(p, yp));
    }
}

#[inline]
fn coord(w: &Win, t: usize, dil: usize) -> usize {
    (w.start + (t * dil) as isize) as usize
}

/// Max pooling. Windows without any input element produce `empty`. When
/// `indices` is given it receives, per output, the flat index of the chosen
/// input element (over the whole input tensor; row-major within the plane,
/// or column-major when `column_major`), or -1 for an empty window. The
/// first maximum wins ties.
pub fn max_pool<T: Copy + PartialOrd + Send + Sync>(
    g: &PoolGeom,
    x: &[T],
    y: &mut [T],
    indices: Option<&mut [i64]>,
    column_major: bool,
    empty: T,
) {
    g.validate_slices(x.len(), y.len());
    let in_size = g.in_size();
    let [id, ih, iw] = g.input;
    let dil = g.dilation;
    let search = |p: usize, w: [Win; 3]| -> (T, i64) {
        let xp = &x[p * in_size..(p + 1) * in_size];
        let mut best: Option<(T, usize)> = None;
        for a in w[0].lo..w[0].hi {
            let z = coord(&w[0], a, dil[0]);
            for b in w[1].lo..w[1].hi {
                let yy = coord(&w[1], b, dil[1]);
                let row = (z * ih + yy) * iw;
                for e in w[2].lo..w[2].hi {
                    let idx = row + coord(&w[2], e, dil[2]);
                    let v = xp[idx];
                    if best.is_none_or(|(bv, _)| v > bv) {
                        best = Some((v, idx));
                    }
                }
            }
        }
        match best {
            None => (empty, -1),
            Some((v, idx)) => {
                let local = if column_major {
                    let (z, r) = (idx / (ih * iw), idx % (ih * iw));
                    let (yy, xx) = (r / iw, r % iw);
                    z + yy * id + xx * id * ih
                } else {
                    idx
                };
                (v, (p * in_size + local) as i64)
            }
        }
    };
    match indices {
        None if g.dilation == [1, 1, 1] => max_pool_rows(g, x, y, empty),
        None => for_each_output(g, y, |p, w, out| *out = search(p, w).0),
        Some(ind) => {
            assert!(ind.len() >= y.len().min(g.planes * g.out_size()), "pool indices too small");
            let mut pairs = vec![(empty, 0i64); g.planes * g.out_size()];
            for_each_output(g, &mut pairs, |p, w, out| *out = search(p, w));
            for ((yv, iv), (v, i)) in y.iter_mut().zip(ind.iter_mut()).zip(pairs) {
                *yv = v;
                *iv = i;
            }
        }
    }
}

/// Max pooling without dilation and without indices, one output row at a
/// time: the window's input rows are reduced element-wise into one row (a
/// loop the compiler vectorizes), then each output takes the maximum of its
/// few columns of it. The windows' maxima are those of
/// [`max_pool`]'s per-output search (maximum is order-free), without its
/// per-tap bookkeeping.
fn max_pool_rows<T: Copy + PartialOrd + Send + Sync>(g: &PoolGeom, x: &[T], y: &mut [T], empty: T) {
    let wins = [windows(g, 0), windows(g, 1), windows(g, 2)];
    let (in_size, out_size) = (g.in_size(), g.out_size());
    let [_, ih, iw] = g.input;
    let [od, oh, ow] = g.output;
    let y = &mut y[..g.planes * out_size];
    if out_size == 0 {
        return;
    }
    let plane = |p: usize, yp: &mut [T]| {
        let xp = &x[p * in_size..(p + 1) * in_size];
        let mut acc: Vec<T> = Vec::with_capacity(iw);
        for z in 0..od {
            for yy in 0..oh {
                let out = &mut yp[(z * oh + yy) * ow..][..ow];
                let (wz, wy) = (&wins[0][z], &wins[1][yy]);
                acc.clear();
                for a in wz.lo..wz.hi {
                    let zi = coord(wz, a, 1);
                    for b in wy.lo..wy.hi {
                        let line = &xp[(zi * ih + coord(wy, b, 1)) * iw..][..iw];
                        if acc.is_empty() {
                            acc.extend_from_slice(line);
                        } else {
                            // A store in every lane (a select, not a
                            // conditional store): the loop then compiles to
                            // vector maxima instead of a branch per value.
                            for (m, &v) in acc.iter_mut().zip(line) {
                                *m = if v > *m { v } else { *m };
                            }
                        }
                    }
                }
                for (o, wx) in out.iter_mut().zip(&wins[2]) {
                    *o = if acc.is_empty() || wx.lo >= wx.hi {
                        empty
                    } else {
                        let mut m = acc[coord(wx, wx.lo, 1)];
                        for e in wx.lo + 1..wx.hi {
                            let v = acc[coord(wx, e, 1)];
                            if v > m {
                                m = v;
                            }
                        }
                        m
                    };
                }
            }
        }
    };
    let work = y.len() * g.kernel.iter().product::<usize>();
    if work < (1 << 15) {
        y.chunks_mut(out_size).enumerate().for_each(|(p, yp)| plane(p, yp));
    } else {
        y.par_chunks_mut(out_size).enumerate().for_each(|(p, yp)| plane(p, yp));
    }
}

/// Average pooling. The divisor counts the taps inside the input, or with
/// `count_include_pad` the taps inside the explicitly padded extent.
pub fn avg_pool<T: GemmScalar>(g: &PoolGeom, x: &[T], y: &mut [T], count_include_pad: bool) {
    g.validate_slices(x.len(), y.len());
    let in_size = g.in_size();
    let [_, ih, iw] = g.input;
    let dil = g.dilation;
    for_each_output(g, y, |p, w, out| {
        let xp = &x[p * in_size..(p + 1) * in_size];
        let mut acc = T::ZERO;
        for a in w[0].lo..w[0].hi {
            let z = coord(&w[0], a, dil[0]);
            for b in w[1].lo..w[1].hi {
                let row = (z * ih + coord(&w[1], b, dil[1])) * iw;
                for e in w[2].lo..w[2].hi {
                    acc += xp[row + coord(&w[2], e, dil[2])];
                }
            }
        }
        let count = if count_include_pad {
            w[0].padded * w[1].padded * w[2].padded
        } else {
            (w[0].hi - w[0].lo) * (w[1].hi - w[1].lo) * (w[2].hi - w[2].lo)
        };
        *out = acc / T::from_f64(count as f64);
    });
}

/// Lp pooling: `(sum |x|^p)^(1/p)` over each window (padding adds nothing).
pub fn lp_pool<T: GemmScalar>(g: &PoolGeom, x: &[T], y: &mut [T], p: f64) {
    g.validate_slices(x.len(), y.len());
    let in_size = g.in_size();
    let [_, ih, iw] = g.input;
    let dil = g.dilation;
    for_each_output(g, y, |pl, w, out| {
        let xp = &x[pl * in_size..(pl + 1) * in_size];
        let mut acc = 0.0f64;
        for a in w[0].lo..w[0].hi {
            let z = coord(&w[0], a, dil[0]);
            for b in w[1].lo..w[1].hi {
                let row = (z * ih + coord(&w[1], b, dil[1])) * iw;
                for e in w[2].lo..w[2].hi {
                    let v = xp[row + coord(&w[2], e, dil[2])].to_f64().abs();
                    acc += if p == 2.0 {
                        v * v
                    } else if p == 1.0 {
                        v
                    } else {
                        v.powf(p)
                    };
                }
            }
        }
        *out = T::from_f64(if p == 2.0 {
            acc.sqrt()
        } else if p == 1.0 {
            acc
        } else {
            acc.powf(1.0 / p)
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g2(
        input: [usize; 2],
        k: [usize; 2],
        s: [usize; 2],
        pad: [usize; 4],
        dil: [usize; 2],
        out: [usize; 2],
    ) -> PoolGeom {
        PoolGeom {
            planes: 1,
            input: [1, input[0], input[1]],
            output: [1, out[0], out[1]],
            kernel: [1, k[0], k[1]],
            stride: [1, s[0], s[1]],
            pad: [0, pad[0], pad[1]],
            pad_end: [0, pad[2], pad[3]],
            dilation: [1, dil[0], dil[1]],
        }
    }

    #[test]
    fn avg_ceil_by_hand() {
        // ONNX test_averagepool_2d_ceil: 4x4 input 1..16, kernel 3, stride 2, ceil.
        let x: Vec<f32> = (1..=16).map(|v| v as f32).collect();
        let g = g2([4, 4], [3, 3], [2, 2], [0; 4], [1, 1], [2, 2]);
        let mut y = vec![0.0; 4];
        avg_pool(&g, &x, &mut y, false);
        assert_eq!(y, vec![6.0, 7.5, 12.0, 13.5]);
    }

    #[test]
    fn avg_count_include_pad_by_hand() {
        // 2x2 input, pads 1, kernel 3, stride 3 (test_averagepool_2d_ceil_last_window_starts_on_pad).
        let x = [0.8580f32, 0.0786, 0.2692, 0.1537];
        let g = g2([2, 2], [3, 3], [3, 3], [1, 1, 1, 1], [1, 1], [1, 1]);
        let mut y = [0.0f32];
        avg_pool(&g, &x, &mut y, true);
        assert!((y[0] - 0.1511).abs() < 1e-4);
        avg_pool(&g, &x, &mut y, false);
        assert!((y[0] - 1.3595 / 4.0).abs() < 1e-4);
    }

    proptest::proptest! {
        /// The row-wise max pooling (no indices, no dilation) gives the
        /// per-output search's values: 1-D to 3-D, pads (windows partly or
        /// wholly outside the input), strides, several planes.
        #[test]
        fn max_rows_match_the_search(
            planes in 1usize..4, input in proptest::array::uniform3(1usize..9), kernel in proptest::array::uniform3(1usize..4),
            stride in proptest::array::uniform3(1usize..4), pad in proptest::array::uniform3(0usize..3),
            seed in proptest::prelude::any::<u32>(),
        ) {
            let output: [usize; 3] =
                std::array::from_fn(|d| (input[d] + 2 * pad[d]).saturating_sub(kernel[d]) / stride[d] + 1);
            let g = PoolGeom { planes, input, output, kernel, stride, pad, pad_end: pad, dilation: [1; 3] };
            let n = planes * input.iter().product::<usize>();
            let x: Vec<f32> =
                (0..n).map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) as f32 / u32::MAX as f32 - 0.5).collect();
            let m = planes * output.iter().product::<usize>();
            let (mut fast, mut searched, mut ind) = (vec![0f32; m], vec![0f32; m], vec![0i64; m]);
            max_pool(&g, &x, &mut fast, None, false, f32::MIN);
            max_pool(&g, &x, &mut searched, Some(&mut ind), false, f32::MIN);
            proptest::prop_assert_eq!(fast, searched);
        }
    }

    #[test]
    fn max_with_indices_by_hand() {
        // 5x5 input 1..25, kernel 2, stride 2 -> [[7, 9], [17, 19]].
        let x: Vec<f32> = (1..=25).map(|v| v as f32).collect();
        let g = g2([5, 5], [2, 2], [2, 2], [0; 4], [1, 1], [2, 2]);
        let mut y = vec![0.0; 4];
        let mut ind = vec![0i64; 4];
        max_pool(&g, &x, &mut y, Some(&mut ind), false, f32::MIN);
        assert_eq!(y, vec![7.0, 9.0, 17.0, 19.0]);
        assert_eq!(ind, vec![6, 8, 16, 18]);
        max_pool(&g, &x, &mut y, Some(&mut ind), true, f32::MIN);
        assert_eq!(ind, vec![6, 16, 8, 18]);
    }

    #[test]
    fn max_dilated_u8() {
        let x: Vec<u8> = (1..=16).collect();
        let g = g2([4, 4], [2, 2], [1, 1], [0; 4], [2, 2], [2, 2]);
        let mut y = vec![0u8; 4];
        max_pool(&g, &x, &mut y, None, false, 0);
        assert_eq!(y, vec![11, 12, 15, 16]);
    }

    #[test]
    fn lp_by_hand() {
        let x = [3.0f32, 4.0, -6.0, 8.0];
        let g = g2([1, 4], [1, 2], [1, 2], [0; 4], [1, 1], [1, 2]);
        let mut y = vec![0.0f32; 2];
        lp_pool(&g, &x, &mut y, 2.0);
        assert_eq!(y, vec![5.0, 10.0]);
    }
}
