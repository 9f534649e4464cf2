//! Epilogues: what happens to a finished block of GEMM output before it is
//! stored, so that bias, residual and activation need no extra pass over
//! memory. The order is ONNX's unfused order: `act(alpha * acc + bias) +
//! residual`.

use crate::elementwise::{gelu_erf_f32, gelu_erf_with, gelu_tanh_f32, gelu_tanh_with, sigmoid_f32, sigmoid_with};

#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum Activation {
    #[default]
    None,
    Relu,
    GeluErf,
    GeluTanh,
    Silu,
}

impl Activation {
    /// Parses the `activation` attribute of `tessera:FusedMatMul`.
    pub fn parse(s: &str) -> Option<Activation> {
        Some(match s {
            "" | "none" => Activation::None,
            "relu" => Activation::Relu,
            "gelu_erf" => Activation::GeluErf,
            "gelu_tanh" => Activation::GeluTanh,
            "silu" => Activation::Silu,
            _ => return None,
        })
    }
    /// The name [`Activation::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            Activation::None => "none",
            Activation::Relu => "relu",
            Activation::GeluErf => "gelu_erf",
            Activation::GeluTanh => "gelu_tanh",
            Activation::Silu => "silu",
        }
    }

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
            Activation::GeluErf => gelu_erf_f32(x),
            Activation::GeluTanh => gelu_tanh_f32(x),
            Activation::Silu => x * sigmoid_f32(x),
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
        Activation::GeluErf => {
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
    }
}

/// A residual operand: element (i, j) at `data[i * row_stride + j]`.
#[derive(Copy, Clone, Debug)]
pub struct Residual<'a> {
    pub data: &'a [f32],
    pub row_stride: usize,
}

/// The fused steps after an fp32 GEMM.
#[derive(Copy, Clone, Debug)]
pub struct Epilogue<'a> {
    pub alpha: f32,
    /// One value per column (or a single value for all).
    pub bias: Option<&'a [f32]>,
    pub activation: Activation,
    pub residual: Option<Residual<'a>>,
}

impl Default for Epilogue<'_> {
    fn default() -> Self {
        Epilogue { alpha: 1.0, bias: None, activation: Activation::None, residual: None }
    }
}

impl<'a> Epilogue<'a> {
    /// Panics if the operands do not fit an `m x n` output (a caller bug).
    pub fn check(&self, m: usize, n: usize) {
        if let Some(b) = self.bias {
            assert!(b.len() == n || b.len() == 1, "bias has {} values for {n} columns", b.len());
        }
        if let (Some(r), true) = (self.residual, m > 0 && n > 0) {
            assert!((m - 1) * r.row_stride + n <= r.data.len(), "residual does not fit {m}x{n}");
        }
    }

    /// Finishes one row segment: `acc` holds columns `j0..j0 + dst.len()` of
    /// output row `row`.
    #[inline]
    pub fn apply_f32(&self, acc: &[f32], row: usize, j0: usize, dst: &mut [f32]) {
        let epi = self;
        with_vector_features!(apply_epilogue(epi: &Epilogue, acc: &[f32], row: usize, j0: usize, dst: &mut [f32]))
    }
}

/// The one definition of the epilogue, compiled for each vector unit by
/// `with_vector_features!`.
#[inline(always)]
fn apply_epilogue<const FMA: bool>(epi: &Epilogue, acc: &[f32], row: usize, j0: usize, dst: &mut [f32]) {
    epi.apply_generic::<FMA>(acc, row, j0, dst)
}

impl Epilogue<'_> {
    #[inline(always)]
    fn apply_generic<const FMA: bool>(&self, acc: &[f32], row: usize, j0: usize, dst: &mut [f32]) {
        let n = dst.len();
        let acc = &acc[..n];
        let alpha = self.alpha;
        match self.bias {
            Some(b) if b.len() == 1 => dst.iter_mut().zip(acc).for_each(|(d, &a)| *d = alpha * a + b[0]),
            Some(b) => dst.iter_mut().zip(acc).zip(&b[j0..j0 + n]).for_each(|((d, &a), &b)| *d = alpha * a + b),
            None => dst.iter_mut().zip(acc).for_each(|(d, &a)| *d = alpha * a),
        }
        // The activation loops live in `activate`'s body, which is inlined
        // here and so compiled with this function's vector features.
        activate_body::<FMA>(self.activation, dst);
        if let Some(r) = self.residual {
            let src = &r.data[row * r.row_stride + j0..][..n];
            dst.iter_mut().zip(src).for_each(|(d, &s)| *d += s);
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
    #[inline(always)]
    fn value(&self, acc: i32, row: usize, col: usize) -> i32 {
        let za = self.a_zero[if self.a_zero.len() == 1 { 0 } else { row }];
        let zb = self.b_zero[if self.b_zero.len() == 1 { 0 } else { col }];
        acc.wrapping_sub(za.wrapping_mul(self.col_sums[col]))
            .wrapping_sub(zb.wrapping_mul(self.row_sums[row]))
            .wrapping_add(self.k.wrapping_mul(za).wrapping_mul(zb))
    }

    pub fn apply_i32(&self, acc: &[i32], row: usize, j0: usize, dst: &mut [i32]) {
        for (j, (d, &a)) in dst.iter_mut().zip(acc).enumerate() {
            *d = self.value(a, row, j0 + j);
        }
    }

    pub fn apply_scaled(&self, acc: &[i32], row: usize, j0: usize, scale_a: f32, scale_b: &[f32], dst: &mut [f32]) {
        let n = dst.len();
        if self.b_zero.len() == 1 && scale_b.len() != 1 {
            // Per-tensor B zero point, per-column scales (the weights of
            // dynamic quantization): the row's terms hoisted, a loop that
            // vectorizes.
            let za = self.a_zero[if self.a_zero.len() == 1 { 0 } else { row }];
            let zb = self.b_zero[0];
            let row_term = self.k.wrapping_mul(za).wrapping_mul(zb).wrapping_sub(zb.wrapping_mul(self.row_sums[row]));
            let (cs, sb) = (&self.col_sums[j0..j0 + n], &scale_b[j0..j0 + n]);
            for (((d, &a), &c), &s) in dst.iter_mut().zip(&acc[..n]).zip(cs).zip(sb) {
                *d = a.wrapping_sub(za.wrapping_mul(c)).wrapping_add(row_term) as f32 * scale_a * s;
            }
            return;
        }
        for (j, (d, &a)) in dst.iter_mut().zip(acc).enumerate() {
            let sb = scale_b[if scale_b.len() == 1 { 0 } else { j0 + j }];
            *d = self.value(a, row, j0 + j) as f32 * scale_a * sb;
        }
    }
}
