//! Weight compression for the Neural Engine: int8 per-channel symmetric
//! (`constexpr_affine_dequantize`) and k-means palettization
//! (`constexpr_lut_to_dense`). For iOS 16 a palette has 2^bits entries per
//! tensor, indices packed least-significant bit first into uint8; for
//! iOS 18 (opset CoreML8) each group of [`PALETTE_GROUP`] output channels
//! has its own palette and the indices are a typed `uint{bits}` tensor.

use tessera_core::{Error, Result};

use crate::mil::{ConstData, FnBuilder, TType};
use crate::spec::DataType;

/// Weights smaller than this stay dense (the lookup or scale vectors would
/// cost more than they save).
pub const MIN_COMPRESSED_ELEMENTS: usize = 4096;

/// Output channels sharing one palette in the iOS 18 form (fewer rows when
/// this does not divide the channel count; one palette per tensor when no
/// group of 4 to 16 does).
pub const PALETTE_GROUP: usize = 16;

/// Rows per palette for a tensor of `rows` output channels.
pub fn palette_group(rows: usize) -> usize {
    (4..=PALETTE_GROUP).rev().find(|&g| rows.is_multiple_of(g)).unwrap_or(rows.max(1))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightCompression {
    Int8,
    Palette(u8),
}

impl std::str::FromStr for WeightCompression {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "int8" => Ok(WeightCompression::Int8),
            "palette4" => Ok(WeightCompression::Palette(4)),
            "palette6" => Ok(WeightCompression::Palette(6)),
            "palette8" => Ok(WeightCompression::Palette(8)),
            other => Err(format!("unknown quantization '{other}' (int8, palette4, palette6, palette8)")),
        }
    }
}

/// Per-row (axis 0) symmetric int8: values and one scale per row.
pub fn quantize_int8_per_channel(w: &[f32], rows: usize) -> (Vec<i8>, Vec<f32>) {
    let per = w.len() / rows.max(1);
    let mut q = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(rows);
    for r in 0..rows {
        let row = &w[r * per..(r + 1) * per];
        let m = row.iter().fold(0f32, |a, &x| a.max(x.abs()));
        let s = if m > 0.0 { m / 127.0 } else { 1.0 };
        scales.push(s);
        q.extend(row.iter().map(|&x| (x / s).round().clamp(-127.0, 127.0) as i8));
    }
    (q, scales)
}

/// 1-D k-means (Lloyd's iterations on the sorted values, centroids started
/// at quantiles): the lookup table and each value's index.
pub fn kmeans_palette(w: &[f32], bits: u8) -> (Vec<f32>, Vec<u8>) {
    let k = 1usize << bits;
    let mut sorted: Vec<f32> = w.iter().copied().filter(|x| x.is_finite()).collect();
    sorted.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    if sorted.is_empty() {
        return (vec![0.0; k], vec![0; w.len()]);
    }
    let n = sorted.len();
    let mut prefix = Vec::with_capacity(n + 1);
    let mut prefix2 = Vec::with_capacity(n + 1);
    prefix.push(0f64);
    prefix2.push(0f64);
    for &x in &sorted {
        prefix.push(prefix.last().expect("seeded") + x as f64);
        prefix2.push(prefix2.last().expect("seeded") + (x as f64) * (x as f64));
    }
    let mean = |s: usize, e: usize| (prefix[e] - prefix[s]) / (e - s) as f64;
    let sse = |s: usize, e: usize| (prefix2[e] - prefix2[s]) - (prefix[e] - prefix[s]).powi(2) / (e - s) as f64;
    // Start where high-resolution quantization theory puts the levels:
    // equal steps of the cumulative cube root of the density (a histogram
    // with about 8 values per bin, so that small groups are not noise).
    let (lo, hi) = (sorted[0] as f64, sorted[n - 1] as f64);
    let bins = (n / 8).clamp(16, 4096);
    let width = ((hi - lo) / bins as f64).max(f64::MIN_POSITIVE);
    let mut hist = vec![0f64; bins];
    for &x in &sorted {
        hist[(((x as f64 - lo) / width) as usize).min(bins - 1)] += 1.0;
    }
    let cum: Vec<f64> = hist
        .iter()
        .scan(0.0, |acc, &h| {
            *acc += h.cbrt();
            Some(*acc)
        })
        .collect();
    let total = cum[bins - 1];
    let mut c: Vec<f64> = (0..k)
        .map(|i| {
            let target = (i as f64 + 0.5) / k as f64 * total;
            let b = cum.partition_point(|&v| v < target).min(bins - 1);
            lo + (b as f64 + 0.5) * width
        })
        .collect();
    // An iteration costs k binary searches over the sorted values (prefix
    // sums give each cluster's mean and squared error), so many are cheap;
    // Lloyd's steps converge slowly for large k.
    for _ in 0..2000 {
        c.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
        c.dedup();
        // Boundaries between neighbouring centroids split the sorted data.
        let mut start = 0usize;
        let mut ranges = Vec::with_capacity(k);
        for i in 0..c.len() {
            let end = if i + 1 == c.len() {
                n
            } else {
                let mid = ((c[i] + c[i + 1]) / 2.0) as f32;
                sorted.partition_point(|&x| x <= mid)
            };
            if end > start {
                ranges.push((start, end));
            }
            start = end.max(start);
        }
        // A centroid that lost all its values is reborn by splitting the
        // cluster with the largest squared error (small groups lose many).
        while ranges.len() < k {
            let (j, &(s, e)) = ranges
                .iter()
                .enumerate()
                .max_by(|a, b| sse(a.1 .0, a.1 .1).partial_cmp(&sse(b.1 .0, b.1 .1)).expect("finite"))
                .expect("at least one cluster");
            if sse(s, e) <= 1e-12 * (1.0 + prefix2[n]) || e - s < 2 {
                break;
            }
            let mid = s + (e - s) / 2;
            ranges[j] = (s, mid);
            ranges.insert(j + 1, (mid, e));
        }
        let next: Vec<f64> = ranges.iter().map(|&(s, e)| mean(s, e)).collect();
        let moved = next.len() != c.len() || next.iter().zip(&c).any(|(a, b)| (a - b).abs() > 1e-9 * (1.0 + b.abs()));
        c = next;
        if !moved {
            break;
        }
    }
    let lut: Vec<f32> = {
        let mut l: Vec<f32> = c.iter().map(|&v| v as f32).collect();
        l.resize(k, *l.last().unwrap_or(&0.0));
        l
    };
    let used = c.len();
    let idx = w
        .iter()
        .map(|&x| {
            let p = lut[..used].partition_point(|&v| v < x);
            let best = if p == 0 {
                0
            } else if p >= used {
                used - 1
            } else if (x - lut[p - 1]).abs() <= (lut[p] - x).abs() {
                p - 1
            } else {
                p
            };
            best as u8
        })
        .collect();
    (lut, idx)
}

/// Packs `bits`-wide indices, least significant bit first.
pub fn pack_bits(idx: &[u8], bits: u8) -> Vec<u8> {
    let total = idx.len() * bits as usize;
    let mut out = vec![0u8; total.div_ceil(8)];
    for (i, &v) in idx.iter().enumerate() {
        for b in 0..bits as usize {
            let p = i * bits as usize + b;
            out[p / 8] |= ((v >> b) & 1) << (p % 8);
        }
    }
    out
}

pub fn unpack_bits(packed: &[u8], bits: u8, count: usize) -> Result<Vec<u8>> {
    if packed.len() * 8 < count * bits as usize {
        return Err(Error::InvalidModel(format!(
            "{} packed bytes hold fewer than {count} {bits}-bit indices",
            packed.len()
        )));
    }
    Ok((0..count)
        .map(|i| {
            (0..bits as usize).fold(0u8, |acc, b| {
                let p = i * bits as usize + b;
                acc | (((packed[p / 8] >> (p % 8)) & 1) << b)
            })
        })
        .collect())
}

/// Emits `data` (shape `shape`, rows along axis 0) compressed; returns the
/// name of the dense value the program sees. `ios18` selects the opset
/// CoreML8 forms.
pub fn emit_compressed(
    b: &mut FnBuilder,
    hint: &str,
    dt: DataType,
    shape: &[usize],
    data: &[f32],
    c: WeightCompression,
    ios18: bool,
) -> Result<String> {
    let out = TType::new(dt, shape);
    match c {
        WeightCompression::Int8 => {
            let rows = shape[0];
            let (q, scales) = quantize_int8_per_channel(data, rows);
            let qd = b.constant(&format!("{hint}_quantized"), TType::new(DataType::Int8, shape), ConstData::I8(q))?;
            let zp = b.constant(
                &format!("{hint}_zero_point"),
                TType::new(DataType::Int8, &[rows]),
                ConstData::I8(vec![0; rows]),
            )?;
            let sc = b.const_float(&format!("{hint}_scale"), dt, &[rows], scales)?;
            let ax = b.const_int(&format!("{hint}_axis"), 0)?;
            b.op1(
                "constexpr_affine_dequantize",
                hint,
                &[("quantized_data", &[&qd]), ("zero_point", &[&zp]), ("scale", &[&sc]), ("axis", &[&ax])],
                out,
            )
        }
        WeightCompression::Palette(bits) if ios18 => {
            let rows = shape[0];
            let group = palette_group(rows);
            let per_group = data.len() / rows * group;
            let k = 1usize << bits;
            let mut luts = Vec::with_capacity(rows / group * k);
            let mut idx = Vec::with_capacity(data.len());
            for chunk in data.chunks(per_group) {
                let (l, i) = kmeans_palette(chunk, bits);
                luts.extend(l);
                idx.extend(i);
            }
            let mut lut_shape = vec![rows / group];
            lut_shape.extend(std::iter::repeat_n(1, shape.len() - 1));
            lut_shape.extend([k, 1]);
            let l = b.const_float(&format!("{hint}_lut"), dt, &lut_shape, luts)?;
            let idt = crate::mil::index_dtype(bits)?;
            let data = if bits == 8 { ConstData::U8(idx) } else { ConstData::Indices { bits, values: idx } };
            let ix = b.constant(&format!("{hint}_indices"), TType::new(idt, shape), data)?;
            b.op1("constexpr_lut_to_dense", hint, &[("indices", &[&ix]), ("lut", &[&l])], out)
        }
        WeightCompression::Palette(bits) => {
            let (lut, idx) = kmeans_palette(data, bits);
            let packed = pack_bits(&idx, bits);
            let k = lut.len();
            let l = b.const_float(&format!("{hint}_lut"), dt, &[k], lut)?;
            let n = packed.len();
            let ix =
                b.constant(&format!("{hint}_indices"), TType::new(DataType::Uint8, &[n]), ConstData::U8(packed))?;
            let sh = b.constant(
                &format!("{hint}_shape"),
                TType::new(DataType::Uint32, &[shape.len()]),
                ConstData::U32(shape.iter().map(|&d| d as u32).collect()),
            )?;
            b.op1("constexpr_lut_to_dense", hint, &[("indices", &[&ix]), ("lut", &[&l]), ("shape", &[&sh])], out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn bit_packing_round_trips(bits in prop::sample::select(vec![1u8, 2, 4, 6, 8]), n in 1usize..200, seed in 0u64..1000) {
            let idx: Vec<u8> = (0..n).map(|i| ((i as u64 * 2654435761 + seed) % (1u64 << bits)) as u8).collect();
            let p = pack_bits(&idx, bits);
            prop_assert_eq!(p.len(), (n * bits as usize).div_ceil(8));
            prop_assert_eq!(unpack_bits(&p, bits, n).unwrap(), idx);
        }
    }

    #[test]
    fn packing_matches_the_opset_example() {
        // iOS 16 constexpr_lut_to_dense docs: n_bits 2, indices [0,3,2,1,3]
        // pack to byte 0 = 0b01_10_11_00, byte 1 = 0b11.
        assert_eq!(pack_bits(&[0, 3, 2, 1, 3], 2), vec![0b0110_1100, 0b11]);
    }

    #[test]
    fn int8_error_is_within_half_a_step() {
        let w: Vec<f32> = (0..64).map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0).collect();
        let (q, s) = quantize_int8_per_channel(&w, 4);
        for (i, (&x, &qi)) in w.iter().zip(&q).enumerate() {
            let sc = s[i / 16];
            assert!((x - qi as f32 * sc).abs() <= sc / 2.0 + 1e-6);
        }
    }

    #[test]
    fn kmeans_finds_well_separated_clusters() {
        let mut w = Vec::new();
        for c in [-3.0f32, -1.0, 0.5, 4.0] {
            for j in 0..50 {
                w.push(c + (j as f32 - 25.0) * 1e-3);
            }
        }
        let (lut, idx) = kmeans_palette(&w, 2);
        for (i, &x) in w.iter().enumerate() {
            assert!((lut[idx[i] as usize] - x).abs() < 0.03, "{x} -> {}", lut[idx[i] as usize]);
        }
        // More bits never fit worse.
        let err = |bits| {
            let (l, ix) = kmeans_palette(&w, bits);
            w.iter().zip(&ix).map(|(&x, &i)| (x - l[i as usize]).powi(2)).sum::<f32>()
        };
        assert!(err(4) <= err(2) + 1e-6);
    }
}

#[cfg(test)]
mod quality {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Relative RMS error of a palette fit on normal data.
    fn rel_rms(bits: u8) -> f64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let w: Vec<f32> = (0..100_000)
            .map(|_| {
                let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
                ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
            })
            .collect();
        let (lut, idx) = kmeans_palette(&w, bits);
        let e: f64 = w.iter().zip(&idx).map(|(&x, &i)| ((x - lut[i as usize]) as f64).powi(2)).sum();
        let s: f64 = w.iter().map(|&x| (x as f64).powi(2)).sum();
        (e / s).sqrt()
    }

    #[test]
    fn small_groups_keep_every_palette_entry() {
        // 1024 values for 64 entries (one iOS 18 group of 16 rows of 64):
        // fitting a small sample must beat the large-sample optimum (0.026
        // at 6 bits), which needs all 64 entries in use.
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let w: Vec<f32> = (0..1024)
            .map(|_| {
                let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
                ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
            })
            .collect();
        let (lut, idx) = kmeans_palette(&w, 6);
        let used: std::collections::HashSet<u8> = idx.iter().copied().collect();
        let e: f64 = w.iter().zip(&idx).map(|(&x, &i)| ((x - lut[i as usize]) as f64).powi(2)).sum();
        let s: f64 = w.iter().map(|&x| (x as f64).powi(2)).sum();
        let rel = (e / s).sqrt();
        eprintln!("1024 values, 6 bits: {} entries used, rel rms {rel:.4}", used.len());
        assert_eq!(used.len(), 64);
        assert!(rel < 0.026, "{rel}");
    }

    #[test]
    fn palette_error_is_near_lloyd_max() {
        // Lloyd-Max quantizers of a unit normal: MSE 0.0095 at 4 bits
        // (rel RMS ~0.097); 6 bits is about 4x finer again.
        let (e4, e6, e8) = (rel_rms(4), rel_rms(6), rel_rms(8));
        eprintln!("palette rel rms: 4 bits {e4:.4}, 6 bits {e6:.4}, 8 bits {e8:.4}");
        assert!(e4 < 0.11, "{e4}");
        assert!(e6 < 0.03, "{e6}");
        assert!(e8 < 0.009, "{e8}");
    }
}
