//! Epilogues: what happens to a finished block of GEMM output before it is
//! stored, so that bias, residual and activation need no extra pass over
//! memory. The order is ONNX's unfused order: `act(alpha * acc + bias) +
//! residual`.

use super::pack::Split;
use super::ukernel::{AccBlock, MR, NR};
use crate::elementwise::{gelu_erf_f32, gelu_erf_with, gelu_tanh_f32, gelu_tanh_with, sigmoid_f32, sigmoid_with};

#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum Activation {
    #[default]
    None,
    Relu,
    GeluErf,
    GeluTanh,
    Silu,
    /// `min(max(x, 0), 6)`: `Clip(0, 6)`, MobileNet's activation.
    Relu6,
    /// GELU (erf) by the AVX-512 pieces where the CPU has AVX-512F
    /// (`elementwise::gelu_pieces`: within 2e-5 relative from -3 up and 5e-6
    /// absolute everywhere, about a third of the work),
    /// [`Activation::GeluErf`] elsewhere. For the reduced precisions (bf16,
    /// int8), whose products round far more than that;
    /// fp32 and a model's own integer products keep `GeluErf`, whose
    /// roundings match the definition's closely enough that a dynamic
    /// quantization after it lands on the same integers.
    GeluErfPieces,
}

impl Activation {
    /// Parses the `activation` attribute of `tessera:FusedMatMul`.
    pub fn parse(s: &str) -> Option<Activation> {
        Some(match s {
            "" | "none" => Activation::None,
            "relu" => Activation::Relu,
            "gelu_erf" => Activation::GeluErf,
            "gelu_erf_pieces" => Activation::GeluErfPieces,
            "gelu_tanh" => Activation::GeluTanh,
            "silu" => Activation::Silu,
            "relu6" => Activation::Relu6,
            _ => return None,
        })
    }
    /// The name [`Activation::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            Activation::None => "none",
            Activation::Relu => "relu",
            Activation::GeluErf => "gelu_erf",
            Activation::GeluErfPieces => "gelu_erf_pieces",
            Activation::GeluTanh => "gelu_tanh",
            Activation::Silu => "silu",
            Activation::Relu6 => "relu6",
        }
    }

    /// The activation a reduced-precision product uses for this one: GELU
    /// (erf) by pieces, the others as they are.
    pub fn for_reduced_precision(self) -> Activation {
        match self {
            Activation::GeluErf => Activation::GeluErfPieces,
            a => a,
        }
    }

    /// The scalar form (for `GeluErfPieces`, the `GeluErf` definition).
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::None => x,
            // max(x, 0) but NaN stays NaN. `x + 0.0` (not `x`) so that an
            // in-place loop stores a computed value in every lane rather
            // than masking the unchanged ones (a slow masked store).
            Activation::Relu => {
                if x < 0.0 {
                    0.0
                } else {
                    x + 0.0
                }
            }
            Activation::GeluErf | Activation::GeluErfPieces => gelu_erf_f32(x),
            Activation::GeluTanh => gelu_tanh_f32(x),
            Activation::Silu => x * sigmoid_f32(x),
            // NaN stays NaN, as in `Relu`.
            Activation::Relu6 => {
                if x < 0.0 {
                    0.0
                } else if x > 6.0 {
                    6.0
                } else {
                    x + 0.0
                }
            }
        }
    }
}

/// Applies `act` to every element of `x`, vectorized for the widest unit
/// the CPU has (the activations are branch-free polynomial forms).
pub fn activate(act: Activation, x: &mut [f32]) {
    with_vector_features!(activate_body(act: Activation, x: &mut [f32]))
}

/// The activation loops, inlined into each vector-feature wrapper.
#[inline(always)]
fn activate_body<const FMA: bool>(act: Activation, x: &mut [f32]) {
    // Plain loops, not `for_each` closures: a closure the compiler
    // declines to inline is compiled without the caller's vector
    // features, and the activation then runs scalar.
    match act {
        Activation::None => {}
        Activation::Relu => {
            for v in x.iter_mut() {
                *v = Activation::Relu.apply(*v);
            }
        }
        Activation::GeluErf | Activation::GeluErfPieces => {
            #[cfg(target_arch = "x86_64")]
            if act == Activation::GeluErfPieces && FMA && crate::elementwise::gelu_pieces::available() {
                // SAFETY: AVX-512F is present (checked just above).
                return unsafe { crate::elementwise::gelu_pieces::gelu_erf_in_place(x) };
            }
            for v in x.iter_mut() {
                *v = gelu_erf_with::<FMA>(*v);
            }
        }
        Activation::GeluTanh => {
            for v in x.iter_mut() {
                *v = gelu_tanh_with::<FMA>(*v);
            }
        }
        Activation::Silu => {
            for v in x.iter_mut() {
                *v *= sigmoid_with::<FMA>(*v);
            }
        }
        Activation::Relu6 => {
            for v in x.iter_mut() {
                *v = Activation::Relu6.apply(*v);
            }
        }
    }
}

/// A residual operand: element (i, j) at `data[i * row_stride + j]`.
#[derive(Copy, Clone, Debug)]
pub struct Residual<'a> {
    pub data: &'a [f32],
    pub row_stride: usize,
}

/// A round trip through an 8-bit quantization grid, QuantizeLinear then
/// DequantizeLinear with one scale and zero point (a QDQ model's product
/// whose output is quantized for its consumers): `v` becomes
/// `round(clamp(v / scale, lo - zero, hi - zero)) * scale`, rounding half to
/// even (NaN becomes `(0 - zero) * scale`, as the two operators give). The same
/// f32 operations as the operators, so the same bits.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Requantize {
    pub scale: f32,
    pub zero: f32,
    /// The grid's range: 0..=255 (uint8) or -128..=127 (int8).
    pub lo: f32,
    pub hi: f32,
}

impl Requantize {
    /// The grid of an 8-bit type (`signed`: int8) with `scale` and `zero`;
    /// None when `zero` is not a value of the type or `scale` is not a
    /// positive finite number.
    pub fn new(scale: f32, zero: i32, signed: bool) -> Option<Requantize> {
        let (lo, hi) = if signed { (-128, 127) } else { (0, 255) };
        let ok = (lo..=hi).contains(&zero) && scale > 0.0 && scale.is_finite();
        ok.then_some(Requantize { scale, zero: zero as f32, lo: lo as f32, hi: hi as f32 })
    }

    #[inline(always)]
    pub fn apply(&self, v: f32) -> f32 {
        let t = v / self.scale;
        // Clamping before rounding to integer bounds equals clamping after
        // it, and keeps the rounding trick in range (see quant.rs).
        let r = crate::quant::round_even_small(t.clamp(self.lo - self.zero, self.hi - self.zero));
        // NaN quantizes to 0, which dequantizes to `(0 - zero) * scale`
        // (+0, not -0, for a zero point of 0).
        (if t.is_nan() { 0.0 - self.zero } else { r }) * self.scale
    }
}

/// The fused steps after an fp32 GEMM.
#[derive(Copy, Clone, Debug)]
pub struct Epilogue<'a> {
    pub alpha: f32,
    /// Applied to `alpha * acc`, before everything else.
    pub requantize: Option<Requantize>,
    /// One value per column (or a single value for all).
    pub bias: Option<&'a [f32]>,
    /// One value per row, added with `bias` (a convolution's bias when its
    /// output channels are the product's rows).
    pub row_bias: Option<&'a [f32]>,
    pub activation: Activation,
    pub residual: Option<Residual<'a>>,
    /// The residual is added before the activation, `act(alpha * acc +
    /// bias + residual)` (a convolution's residual block: `Relu(Conv + x)`),
    /// instead of after it.
    pub residual_first: bool,
}

impl Default for Epilogue<'_> {
    fn default() -> Self {
        Epilogue {
            alpha: 1.0,
            requantize: None,
            bias: None,
            row_bias: None,
            activation: Activation::None,
            residual: None,
            residual_first: false,
        }
    }
}

impl<'a> Epilogue<'a> {
    /// Panics if the operands do not fit an `m x n` output (a caller bug).
    pub fn check(&self, m: usize, n: usize) {
        if let Some(b) = self.bias {
            assert!(b.len() == n || b.len() == 1, "bias has {} values for {n} columns", b.len());
        }
        if let Some(b) = self.row_bias {
            assert!(b.len() >= m, "row bias has {} values for {m} rows", b.len());
        }
        if let (Some(r), true) = (self.residual, m > 0 && n > 0) {
            assert!((m - 1) * r.row_stride + n <= r.data.len(), "residual does not fit {m}x{n}");
        }
    }

    /// [`Epilogue::apply_block_into`] for a block that becomes one k-block
    /// of another product's A panel, in `split`'s parts (`dst`, 2 KiB a
    /// part): row `i < rows` is the finished row split (rounded to bf16 for
    /// one part), zero past `cols`; rows from `rows` on are zero (they pad
    /// the next product's M). No residual.
    #[allow(clippy::too_many_arguments)]
    pub fn apply_block_into_a_panel(
        &self,
        acc: &AccBlock,
        i0: usize,
        j0: usize,
        rows: usize,
        cols: usize,
        split: Split,
        dst: &mut [u8],
    ) {
        let epi = self;
        with_vector_features!(apply_block_into_a_panel_body(
            epi: &Epilogue,
            acc: &AccBlock,
            i0: usize,
            j0: usize,
            rows: usize,
            cols: usize,
            split: Split,
            dst: &mut [u8],
        ))
    }

    /// Finishes one row segment: `acc` holds columns `j0..j0 + dst.len()` of
    /// output row `row`.
    #[inline]
    pub fn apply_f32(&self, acc: &[f32], row: usize, j0: usize, dst: &mut [f32]) {
        let epi = self;
        with_vector_features!(apply_epilogue(epi: &Epilogue, acc: &[f32], row: usize, j0: usize, dst: &mut [f32]))
    }
}

#[inline(always)]
fn apply_block_body<const FMA: bool>(
    epi: &Epilogue,
    acc: &mut AccBlock,
    i0: usize,
    j0: usize,
    rows: usize,
    cols: usize,
) {
    let bias = epi.block_bias(j0, cols);
    for (i, row) in acc.0.chunks_exact_mut(NR).take(rows).enumerate() {
        let mut v = [0f32; NR];
        for j in 0..NR {
            v[j] = f32::from_bits(row[j]);
        }
        epi.finish_row::<FMA>(&mut v, &bias, i0 + i, j0, cols);
        for j in 0..NR {
            row[j] = v[j].to_bits();
        }
    }
}

/// Each of the block's first `rows` rows finished by the epilogue (read
/// whole: element-wise reads of the block were compiled into scalar loads
/// and inserts, and the tile driver ran about a third slower with them, bf16
/// at M = 128, one thread), handed to `put(row, values)`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn finished_rows<const FMA: bool>(
    epi: &Epilogue,
    acc: &AccBlock,
    i0: usize,
    j0: usize,
    rows: usize,
    cols: usize,
    mut put: impl FnMut(usize, &[f32; NR]),
) {
    let bias = epi.block_bias(j0, cols);
    for (i, row) in acc.as_f32().chunks_exact(NR).take(rows).enumerate() {
        let mut v: [f32; NR] = row.try_into().expect("rows of NR");
        epi.finish_row_general::<FMA>(&mut v, &bias, i0 + i, j0, cols);
        put(i, &v);
    }
}

#[inline(always)]
fn apply_block_into_body<const FMA: bool>(
    epi: &Epilogue,
    acc: &AccBlock,
    i0: usize,
    j0: usize,
    cols: usize,
    dst: &mut [&mut [f32]],
) {
    finished_rows::<FMA>(epi, acc, i0, j0, dst.len(), cols, |i, v| store_row(dst[i], v));
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn apply_block_into_a_panel_body<const FMA: bool>(
    epi: &Epilogue,
    acc: &AccBlock,
    i0: usize,
    j0: usize,
    rows: usize,
    cols: usize,
    split: Split,
    dst: &mut [u8],
) {
    assert!(epi.residual.is_none(), "a block finished into A panels takes no residual");
    finished_rows::<FMA>(epi, acc, i0, j0, rows, cols, |i, v| super::pack::pack_a_row_parts(dst, split, i, &v[..cols]));
    for i in rows..MR {
        super::pack::pack_a_row_parts(dst, split, i, &[]);
    }
}

/// `out.copy_from_slice(&v[..out.len()])`, a whole row as fixed-size
/// vector stores (a run-time length would become a `memcpy` call per row).
#[inline(always)]
pub(crate) fn store_row<T: Copy>(out: &mut [T], v: &[T; NR]) {
    match <&mut [T; NR]>::try_from(&mut *out) {
        Ok(o) => *o = *v,
        Err(_) => {
            for (d, s) in out.iter_mut().zip(v) {
                *d = *s;
            }
        }
    }
}

/// `v += src` over `src`'s length (nothing for `None`).
#[inline(always)]
fn add_into(v: &mut [f32; NR], src: Option<&[f32]>) {
    if let Some(src) = src {
        add_row(v, src);
    }
}

/// `v += src` over `src`'s length; a whole row as fixed-size vector adds
/// (a run-time length was compiled into scalar loads and adds).
#[inline(always)]
fn add_row(v: &mut [f32; NR], src: &[f32]) {
    match <&[f32; NR]>::try_from(src) {
        Ok(s) => {
            for j in 0..NR {
                v[j] += s[j];
            }
        }
        Err(_) => {
            for (d, &s) in v.iter_mut().zip(src) {
                *d += s;
            }
        }
    }
}

#[inline(always)]
fn finish_row_general_body<const FMA: bool>(
    epi: &Epilogue,
    v: &mut [f32; NR],
    bias: &[f32; NR],
    row: usize,
    j0: usize,
    cols: usize,
) {
    epi.finish_row_general::<FMA>(v, bias, row, j0, cols)
}

#[inline(always)]
fn finish_transposed_body<const FMA: bool>(epi: &Epilogue, v: &mut [f32], residual: &[f32]) {
    for (d, &s) in v.iter_mut().zip(residual) {
        *d += s;
    }
    if epi.residual_first {
        activate_body::<FMA>(epi.activation, v);
    }
}

/// The one definition of the epilogue, compiled for each vector unit by
/// `with_vector_features!`.
#[inline(always)]
fn apply_epilogue<const FMA: bool>(epi: &Epilogue, acc: &[f32], row: usize, j0: usize, dst: &mut [f32]) {
    epi.apply_generic::<FMA>(acc, row, j0, dst)
}

impl<'a> Epilogue<'a> {
    /// Applies the epilogue in place to a finished fp32 accumulator block
    /// (rows `i0..i0 + rows`, columns `j0..j0 + cols` of the output): one
    /// call per block, its loops over whole 32-value rows.
    pub fn apply_block(&self, acc: &mut AccBlock, i0: usize, j0: usize, rows: usize, cols: usize) {
        let epi = self;
        with_vector_features!(apply_block_body(
            epi: &Epilogue,
            acc: &mut AccBlock,
            i0: usize,
            j0: usize,
            rows: usize,
            cols: usize,
        ))
    }

    /// [`Epilogue::apply_block`] storing each finished row straight into
    /// its place in the output: `dst[i]` is row `i0 + i`'s columns from
    /// `j0` (`cols` of them; one slice per row of the block, `dst.len()`
    /// rows), so the block makes no second trip through memory.
    pub fn apply_block_into(&self, acc: &AccBlock, i0: usize, j0: usize, cols: usize, dst: &mut [&mut [f32]]) {
        let epi = self;
        with_vector_features!(apply_block_into_body(
            epi: &Epilogue,
            acc: &AccBlock,
            i0: usize,
            j0: usize,
            cols: usize,
            dst: &mut [&mut [f32]],
        ))
    }

    /// The bias for columns `j0..j0 + cols`, zero elsewhere.
    #[inline(always)]
    fn block_bias(&self, j0: usize, cols: usize) -> [f32; NR] {
        let mut bias = [0f32; NR];
        if let Some(b) = self.bias {
            per_column(b, j0, cols, &mut bias);
        }
        bias
    }

    /// `act(requantize(alpha * v) + bias) + residual` on one row of a block; lanes past
    /// `cols` hold values that are never stored.
    #[inline(always)]
    fn finish_row<const FMA: bool>(&self, v: &mut [f32; NR], bias: &[f32; NR], row: usize, j0: usize, cols: usize) {
        if self.row_bias.is_some() || self.residual_first || self.requantize.is_some() {
            // Out of line: the products' epilogues (dequantization above
            // all) keep the short body below, which measured faster on
            // int8 BERT than one body for every case.
            return self.finish_row_general_out_of_line(v, bias, row, j0, cols);
        }
        for j in 0..NR {
            v[j] = self.alpha * v[j] + bias[j];
        }
        activate_body::<FMA>(self.activation, v);
        if let Some(r) = self.residual {
            add_row(v, &r.data[row * r.row_stride + j0..][..cols]);
        }
    }

    /// Out of line, a function loses its caller's target features: it was
    /// compiled for baseline x86-64 (where `mul_add` is a libm call), and
    /// BERT's MLP-up product with GELU and a requantized output ran about 8x
    /// slower there (123 against 16 ms a run, Zen 4). It picks the vector
    /// unit again.
    #[inline(never)]
    fn finish_row_general_out_of_line(&self, v: &mut [f32; NR], bias: &[f32; NR], row: usize, j0: usize, cols: usize) {
        let epi = self;
        with_vector_features!(finish_row_general_body(
            epi: &Epilogue,
            v: &mut [f32; NR],
            bias: &[f32; NR],
            row: usize,
            j0: usize,
            cols: usize,
        ))
    }

    /// Every step: a bias per row, the residual before or after the
    /// activation.
    #[inline(always)]
    fn finish_row_general<const FMA: bool>(
        &self,
        v: &mut [f32; NR],
        bias: &[f32; NR],
        row: usize,
        j0: usize,
        cols: usize,
    ) {
        let row_bias = self.row_bias.map_or(0.0, |b| b[row]);
        if let Some(q) = self.requantize {
            for j in 0..NR {
                v[j] = q.apply(self.alpha * v[j]) + (bias[j] + row_bias);
            }
        } else {
            for j in 0..NR {
                v[j] = self.alpha * v[j] + (bias[j] + row_bias);
            }
        }
        let residual = self.residual.map(|r| &r.data[row * r.row_stride + j0..][..cols]);
        if self.residual_first {
            add_into(v, residual);
        }
        activate_body::<FMA>(self.activation, v);
        if !self.residual_first {
            add_into(v, residual);
        }
    }

    /// The epilogue's steps before a transposed store: the whole epilogue
    /// without a residual; with one, only what precedes it (the residual,
    /// indexed like the stored output, is added by
    /// [`Epilogue::finish_transposed_row`]).
    pub fn before_transpose(&self) -> Epilogue<'a> {
        match self.residual {
            None => *self,
            Some(_) => Epilogue {
                residual: None,
                residual_first: false,
                activation: if self.residual_first { Activation::None } else { self.activation },
                ..*self
            },
        }
    }

    /// Finishes one stored row of a transposed product (column `j` of the
    /// product; `v` holds its values after [`Epilogue::before_transpose`]):
    /// adds `residual` (the same row of the residual, laid out like the
    /// output), then the activation when it follows the residual.
    pub fn finish_transposed_row(&self, v: &mut [f32], residual: &[f32]) {
        let epi = self;
        with_vector_features!(finish_transposed_body(epi: &Epilogue, v: &mut [f32], residual: &[f32]))
    }

    /// The row form in runs of 32 columns through [`Epilogue::finish_row`],
    /// so that the block form and it are one definition.
    #[inline(always)]
    fn apply_generic<const FMA: bool>(&self, acc: &[f32], row: usize, j0: usize, dst: &mut [f32]) {
        let n = dst.len();
        for (off, out) in (0..n).step_by(NR).zip(dst.chunks_mut(NR)) {
            let len = out.len();
            let mut v = [0f32; NR];
            v[..len].copy_from_slice(&acc[off..off + len]);
            self.finish_row::<FMA>(&mut v, &self.block_bias(j0 + off, len), row, j0 + off, len);
            out.copy_from_slice(&v[..len]);
        }
    }
}

/// Zero-point terms of an integer GEMM:
/// `sum (a - za)(b - zb) = sum ab - za * colsum(b) - zb * rowsum(a) + k * za * zb`.
pub(crate) struct I8Correction<'a> {
    pub k: i32,
    pub a_zero: &'a [i32],
    pub row_sums: &'a [i32],
    pub b_zero: &'a [i32],
    pub col_sums: &'a [i32],
}

impl I8Correction<'_> {
    /// Replaces the raw products of a finished accumulator block (rows
    /// `i0..i0 + rows`, columns `j0..j0 + cols` of the output) by the
    /// zero-point-corrected results, in place.
    pub fn correct_block(&self, acc: &mut AccBlock, i0: usize, j0: usize, rows: usize, cols: usize) {
        let corr = self;
        with_vector_features!(correct_block_body(
            corr: &I8Correction,
            acc: &mut AccBlock,
            i0: usize,
            j0: usize,
            rows: usize,
            cols: usize,
        ))
    }

    /// `epi(scale_a[i] * scale_b[j] * corrected)` of a finished accumulator
    /// block (`scale_a` per tensor or per row, `scale_b` per tensor or per
    /// column), each row stored straight into its place in the output:
    /// `dst[i]` is row `i0 + i`'s columns from `j0`, one slice per row.
    #[allow(clippy::too_many_arguments)]
    pub fn dequantize_block_into(
        &self,
        scale_a: &[f32],
        scale_b: &[f32],
        epi: &Epilogue,
        acc: &AccBlock,
        i0: usize,
        j0: usize,
        cols: usize,
        dst: &mut [&mut [f32]],
    ) {
        let corr = self;
        with_vector_features!(dequantize_block_into_body(
            corr: &I8Correction,
            scale_a: &[f32],
            scale_b: &[f32],
            epi: &Epilogue,
            acc: &AccBlock,
            i0: usize,
            j0: usize,
            cols: usize,
            dst: &mut [&mut [f32]],
        ))
    }

    /// The block's column terms: column sums and B zero points (padded
    /// with zeros past `cols`).
    #[inline(always)]
    fn columns(&self, j0: usize, cols: usize) -> ([i32; NR], [i32; NR]) {
        let (mut cs, mut zb) = ([0i32; NR], [0i32; NR]);
        cs[..cols].copy_from_slice(&self.col_sums[j0..j0 + cols]);
        per_column(self.b_zero, j0, cols, &mut zb);
        (cs, zb)
    }

    /// The row's terms: its A zero point and `k * za - rowsum(a)`.
    #[inline(always)]
    fn row(&self, i: usize) -> (i32, i32) {
        let za = self.a_zero[if self.a_zero.len() == 1 { 0 } else { i }];
        (za, self.k.wrapping_mul(za).wrapping_sub(self.row_sums[i]))
    }
}

/// `values` (one per tensor or one per column) for columns `j0..j0 + cols`
/// into `out`, the rest left as they are.
#[inline(always)]
fn per_column<T: Copy>(values: &[T], j0: usize, cols: usize, out: &mut [T; NR]) {
    if values.len() == 1 {
        out[..cols].fill(values[0]);
    } else {
        out[..cols].copy_from_slice(&values[j0..j0 + cols]);
    }
}

/// `acc - za * colsum + zb * (k * za - rowsum)`: the expansion of
/// `sum (a - za)(b - zb)` above, in wrapping i32 as the exact product is.
#[inline(always)]
fn corrected(acc: u32, za: i32, cs: i32, zb: i32, row_term: i32) -> i32 {
    (acc as i32).wrapping_sub(za.wrapping_mul(cs)).wrapping_add(zb.wrapping_mul(row_term))
}

#[inline(always)]
fn correct_block_body<const FMA: bool>(
    corr: &I8Correction,
    acc: &mut AccBlock,
    i0: usize,
    j0: usize,
    rows: usize,
    cols: usize,
) {
    let (cs, zb) = corr.columns(j0, cols);
    for (i, row) in acc.0.chunks_exact_mut(NR).take(rows).enumerate() {
        let (za, row_term) = corr.row(i0 + i);
        for j in 0..NR {
            row[j] = corrected(row[j], za, cs[j], zb[j], row_term) as u32;
        }
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn dequantize_block_into_body<const FMA: bool>(
    corr: &I8Correction,
    scale_a: &[f32],
    scale_b: &[f32],
    epi: &Epilogue,
    acc: &AccBlock,
    i0: usize,
    j0: usize,
    cols: usize,
    dst: &mut [&mut [f32]],
) {
    let (cs, zb) = corr.columns(j0, cols);
    let mut sb = [0f32; NR];
    per_column(scale_b, j0, cols, &mut sb);
    let bias = epi.block_bias(j0, cols);
    for (i, (row, out)) in acc.0.chunks_exact(NR).zip(dst.iter_mut()).enumerate() {
        let row: &[u32; NR] = row.try_into().expect("rows of NR");
        let r = i0 + i;
        let (za, row_term) = corr.row(r);
        let sa = scale_a[if scale_a.len() == 1 { 0 } else { r }];
        let mut v = [0f32; NR];
        for j in 0..NR {
            v[j] = corrected(row[j], za, cs[j], zb[j], row_term) as f32 * sa * sb[j];
        }
        epi.finish_row::<FMA>(&mut v, &bias, r, j0, cols);
        store_row(out, &v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The grid step is QuantizeLinear (the kernel the CPU operator
        /// runs) then DequantizeLinear's `(q - zero) * scale`, to the bit:
        /// values on and near ties, past both ends, infinities and NaN.
        #[test]
        fn requantize_is_quantize_then_dequantize(
            signed: bool, zero_pick in 0usize..3, scale in 0.001f32..2.0, seed in any::<u64>(),
        ) {
            let zero = if signed { [-128, 0, 127][zero_pick] } else { [0, 128, 255][zero_pick] };
            let q = Requantize::new(scale, zero, signed).expect("an 8-bit grid");
            let mut s = seed | 1;
            let mut v: Vec<f32> = (0..500).map(|_| {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                let t = ((s >> 11) as f64 / (1u64 << 53) as f64 * 600.0 - 300.0) as f32;
                // Half the values at n + 0.5 steps: ties after the division.
                if s % 2 == 0 { (t.floor() + 0.5) * scale } else { t * scale }
            }).collect();
            v.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1e30, -1e30, f32::from_bits(0xffc0_0011)]);
            let mut bytes = vec![0u8; v.len()];
            crate::quant::quantize_linear_8bit(&v, &mut bytes, scale, zero, signed);
            for (&x, &b) in v.iter().zip(&bytes) {
                let stored = if signed { b as i8 as f32 } else { b as f32 };
                let want = (stored - zero as f32) * scale;
                prop_assert_eq!(q.apply(x).to_bits(), want.to_bits(), "x = {} scale {} zero {}", x, scale, zero);
            }
        }
    }

    proptest! {
        /// The dequantizing block epilogue against its definition, one
        /// element at a time (`corrected`, then the scales, then the float
        /// epilogue's row form): the same bits with zero points (per tensor
        /// or per column for B) and without (symmetric, as the tile
        /// provider's dynamic int8), scales per row or per tensor for A and
        /// per column or per tensor for B, blocks anywhere in the output.
        #[test]
        fn dequantize_block_matches_its_definition(
            rows in 1usize..=32, cols in 1usize..=32, i0 in 0usize..64, j0 in 0usize..40, zero_points in 0usize..3,
            per_row_scale in any::<bool>(), per_column_scale in any::<bool>(), act in 0usize..3, requantize: bool,
            seed in any::<u32>(),
        ) {
            let (m, n) = (i0 + rows, j0 + cols);
            let k = 700i32;
            let val = |i: usize| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / (1u32 << 22) as f32 - 2.0;
            let int = |i: usize| ((i as u32).wrapping_mul(2_246_822_519).wrapping_add(seed) >> 12) as i32 - (1 << 19);
            // Symmetric (both 0), per-row A with per-tensor B, or per-row A
            // with per-column B zero points.
            let a_zero: Vec<i32> = if zero_points == 0 { vec![0] } else { (0..m).map(|i| int(i + 100) % 128).collect() };
            let b_zero: Vec<i32> = match zero_points {
                0 => vec![0],
                1 => vec![int(7) % 128],
                _ => (0..n).map(|j| int(j + 150) % 128).collect(),
            };
            let row_sums: Vec<i32> = (0..m).map(|i| int(i + 300)).collect();
            let col_sums: Vec<i32> = (0..n).map(|j| int(j + 600)).collect();
            let corr = I8Correction { k, a_zero: &a_zero, row_sums: &row_sums, b_zero: &b_zero, col_sums: &col_sums };
            let scale_a: Vec<f32> = if per_row_scale { (0..m).map(|i| val(i + 900).abs() + 0.01).collect() } else { vec![0.02] };
            let scale_b: Vec<f32> = if per_column_scale { (0..n).map(|j| val(j + 1200).abs() + 0.01).collect() } else { vec![0.03] };
            let bias: Vec<f32> = (0..n).map(|j| val(j + 1500)).collect();
            let epi = Epilogue {
                bias: Some(&bias),
                activation: [Activation::None, Activation::Relu, Activation::GeluErfPieces][act],
                requantize: requantize.then(|| Requantize::new(0.05, 3, false)).flatten(),
                ..Epilogue::default()
            };
            let mut block = AccBlock::new();
            for (i, w) in block.0.iter_mut().enumerate() {
                *w = int(i + 2000) as u32;
            }
            let mut stored = vec![f32::NAN; rows * cols];
            {
                let mut dst: Vec<&mut [f32]> = stored.chunks_mut(cols).collect();
                corr.dequantize_block_into(&scale_a, &scale_b, &epi, &block, i0, j0, cols, &mut dst);
            }
            let pick = |v: &[f32], x: usize| v[if v.len() == 1 { 0 } else { x }];
            for i in 0..rows {
                let (za, row_term) = corr.row(i0 + i);
                let sa = pick(&scale_a, i0 + i);
                let raw: Vec<f32> = (0..cols)
                    .map(|j| {
                        let zb = b_zero[if b_zero.len() == 1 { 0 } else { j0 + j }];
                        corrected(block.0[i * NR + j], za, col_sums[j0 + j], zb, row_term) as f32 * sa * pick(&scale_b, j0 + j)
                    })
                    .collect();
                let mut want = vec![0f32; cols];
                epi.apply_f32(&raw, i0 + i, j0, &mut want);
                for (j, w) in want.iter().enumerate() {
                    prop_assert_eq!(stored[i * cols + j].to_bits(), w.to_bits(), "({}, {})", i, j);
                }
            }
        }

        /// The block form (the tile driver's) and the row form (the vector
        /// driver's) are one definition: the same bits for every
        /// activation, bias shape and ragged block.
        #[test]
        fn block_epilogue_matches_the_row_epilogue(
            rows in 1usize..=32, cols in 1usize..=32, j0 in 0usize..40, alpha in -2.0f32..2.0,
            act in 0usize..7, bias_kind in 0usize..3, residual in any::<bool>(), residual_first in any::<bool>(),
            row_bias in any::<bool>(), requantize in 0usize..3, seed in any::<u32>(),
        ) {
            let n = j0 + cols;
            let val = |i: usize| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / (1u32 << 22) as f32 - 2.0;
            let bias_all: Vec<f32> = (0..n).map(|j| val(j + 5000)).collect();
            let res: Vec<f32> = (0..rows * n).map(|i| val(i + 9000)).collect();
            let rows_bias: Vec<f32> = (0..rows).map(|i| val(i + 7000)).collect();
            let epi = Epilogue {
                alpha,
                bias: match bias_kind { 0 => None, 1 => Some(&bias_all[..1]), _ => Some(&bias_all[..]) },
                row_bias: row_bias.then_some(&rows_bias[..]),
                activation: [
                    Activation::None,
                    Activation::Relu,
                    Activation::GeluErf,
                    Activation::GeluTanh,
                    Activation::Silu,
                    Activation::Relu6,
                    Activation::GeluErfPieces,
                ][act],
                residual: residual.then_some(Residual { data: &res, row_stride: n }),
                residual_first,
                // None, a uint8 grid, an int8 one (coarse enough to saturate).
                requantize: [None, Requantize::new(0.03, 100, false), Requantize::new(0.02, -5, true)][requantize],
            };
            let mut block = AccBlock::new();
            for (i, w) in block.0.iter_mut().enumerate() {
                *w = (val(i) * 4.0).to_bits();
            }
            let acc = *block.as_f32();
            let mut stored = vec![f32::NAN; rows * cols];
            {
                let mut dst: Vec<&mut [f32]> = stored.chunks_mut(cols).collect();
                epi.apply_block_into(&block, 0, j0, cols, &mut dst);
            }
            epi.apply_block(&mut block, 0, j0, rows, cols);
            for i in 0..rows {
                for j in 0..cols {
                    prop_assert_eq!(stored[i * cols + j].to_bits(), block.as_f32()[i * NR + j].to_bits(), "into ({}, {})", i, j);
                }
            }
            for i in 0..rows {
                let mut want = vec![0f32; cols];
                epi.apply_f32(&acc[i * NR..i * NR + cols], i, j0, &mut want);
                for (j, w) in want.iter().enumerate() {
                    prop_assert_eq!(block.as_f32()[i * NR + j].to_bits(), w.to_bits(), "({}, {})", i, j);
                    // ONNX's unfused order, one scalar step at a time.
                    let b = epi.bias.map_or(0.0, |b| b[if b.len() == 1 { 0 } else { j0 + j }]);
                    let r = if residual { res[i * n + j0 + j] } else { 0.0 };
                    let scaled = alpha * acc[i * NR + j];
                    let scaled = epi.requantize.map_or(scaled, |q| q.apply(scaled));
                    let pre = scaled + (b + if row_bias { rows_bias[i] } else { 0.0 });
                    let exact = if residual_first { epi.activation.apply(pre + r) } else { epi.activation.apply(pre) + r };
                    prop_assert!((w - exact).abs() <= 1e-5 * exact.abs().max(1.0), "({i}, {j}): {w} vs {exact}");
                }
            }
        }
    }
}
