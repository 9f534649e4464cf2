//! The Neural Engine's layout for sequence models (`--layout ane`).
//!
//! Apple's guidance for transformers on the Neural Engine ("Deploying
//! Transformers on the Apple Neural Engine", 2022): keep hidden states
//! channels-first as `(B, C, 1, S)`, run linear layers as 1x1 convolutions,
//! normalize over the channel axis, and compute attention per head with the
//! softmax over a contiguous axis. The ONNX graph stays as exported; this
//! lowering tracks, per ONNX value, a *held* MIL value in another layout:
//!
//! - [`Layout::Ane`]: the ONNX value `[B, S, C]` is held as `[B, C, 1, S]`;
//! - [`Layout::Perm`]: a rank-4 ONNX value equals `transpose(held, perm)`,
//!   which is how the head split of attention (`Reshape` to `[B, S, H, d]`
//!   then `Transpose`) lands without moving data: the held tensor is
//!   `[B, H, d, S]` throughout.
//!
//! Operations with a rule here take and give held values; any other
//! operation reads the ONNX layout, materialized once on demand (a reshape
//! and a transpose), so a rule that declines costs speed, never
//! correctness.

use tessera_core::{Node, Result, Tensor};

use super::{node_err, Ctx};
use crate::mil::TType;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Layout {
    /// ONNX `[B, S, C]` held as `[B, C, 1, S]`.
    Ane,
    /// ONNX value = `transpose(held, perm)` (rank 4).
    Perm([usize; 4]),
}

/// ONNX `[B, S, H, d]` (heads split off the channels) held as `[B, H, d, S]`.
const HEADS: [usize; 4] = [0, 3, 1, 2];
/// ONNX `[B, H, S, d]` (heads moved forward) held as `[B, H, d, S]`.
const HEADS_T: [usize; 4] = [0, 1, 3, 2];
const IDENTITY: [usize; 4] = [0, 1, 2, 3];

fn inverse(p: &[usize; 4]) -> [usize; 4] {
    let mut q = [0; 4];
    for (i, &v) in p.iter().enumerate() {
        q[v] = i;
    }
    q
}

/// `data` of `shape` transposed so that output axis i is input axis
/// `perm[i]` (the interpreter's transpose; `perm` is always a permutation
/// here).
fn transpose_data(data: &[f32], shape: &[usize], perm: &[usize]) -> (Vec<usize>, Vec<f32>) {
    use crate::interp::{transpose, Arr};
    let t = transpose(&Arr::f(crate::spec::DataType::Float32, shape.to_vec(), data.to_vec()), perm)
        .expect("layout permutations are permutations");
    let v = t.floats().expect("f32 data");
    (t.shape, v)
}

/// MIL unary operations that keep any layout.
fn elementwise_unary(op: &str) -> Option<&'static str> {
    Some(match op {
        "Relu" => "relu",
        "Sigmoid" => "sigmoid",
        "Tanh" => "tanh",
        "Erf" => "erf",
        "Exp" => "exp",
        "Sqrt" => "sqrt",
        "Abs" => "abs",
        "Softplus" => "softplus",
        _ => return None,
    })
}

impl Ctx<'_, '_> {
    fn held(&self, name: &str) -> Option<(String, Layout)> {
        self.held.get(name).cloned()
    }

    fn set_held(&mut self, onnx: &str, mil: String, l: Layout) {
        self.held.insert(onnx.to_string(), (mil, l));
    }

    /// The ONNX-layout value of a held one (emitted once, then cached).
    pub(super) fn materialize(&mut self, name: &str, held: &str, l: &Layout) -> Result<String> {
        let ty = self.b.ty(held)?.clone();
        let v = match l {
            Layout::Ane => {
                let (b, c, s) = (ty.shape[0], ty.shape[1], ty.shape[3]);
                let flat = self.reshape_to(&format!("{name}_bcs"), held, &[b, c, s])?;
                let p = self.b.const_ints(&format!("{name}_to_bsc_perm"), &[0, 2, 1])?;
                self.b.op1("transpose", name, &[("x", &[&flat]), ("perm", &[&p])], TType::new(ty.dtype, &[b, s, c]))?
            }
            Layout::Perm(p) => {
                let shape: Vec<usize> = p.iter().map(|&i| ty.shape[i]).collect();
                let pp = self.b.const_ints(&format!("{name}_perm"), &p.map(|v| v as i64))?;
                self.b.op1("transpose", name, &[("x", &[held]), ("perm", &[&pp])], TType::new(ty.dtype, &shape))?
            }
        };
        self.vals.insert(name.to_string(), v.clone());
        Ok(v)
    }

    /// `[B, S, C]` → held `[B, C, 1, S]` (cached per value).
    fn enter_ane(&mut self, n: &Node, name: &str) -> Result<Option<String>> {
        if let Some((h, Layout::Ane)) = self.held(name) {
            return Ok(Some(h));
        }
        if let Some(h) = self.entered.get(name) {
            return Ok(Some(h.clone()));
        }
        let Some(shape) = self.g.concrete_shape_of(name).filter(|s| s.len() == 3) else { return Ok(None) };
        if !self.g.dtype_of(name).is_some_and(|d| d.is_float()) {
            return Ok(None);
        }
        let x = self.val(n, name)?;
        let dt = self.b.ty(&x)?.dtype;
        let (b, s, c) = (shape[0], shape[1], shape[2]);
        let p = self.b.const_ints(&format!("{name}_to_bcs_perm"), &[0, 2, 1])?;
        let t = self.b.op1(
            "transpose",
            &format!("{name}_bcs"),
            &[("x", &[&x]), ("perm", &[&p])],
            TType::new(dt, &[b, c, s]),
        )?;
        let h = self.reshape_to(&format!("{name}_bc1s"), &t, &[b, c, 1, s])?;
        self.entered.insert(name.to_string(), h.clone());
        Ok(Some(h))
    }

    /// A constant operand of an op on a held value, rearranged into the held
    /// layout: (shape, values); None where it would broadcast the held
    /// operand up.
    fn const_held_data(t: &Tensor, plain_out: &[usize], l: &Layout) -> Option<(Vec<usize>, Vec<f32>)> {
        let data: Vec<f32> = t.to_f64_vec().into_iter().map(|v| v as f32).collect();
        if t.numel() == 1 {
            return Some((vec![], data));
        }
        let r = plain_out.len();
        if t.rank() > r {
            return None;
        }
        let mut cs = vec![1usize; r - t.rank()];
        cs.extend_from_slice(t.shape());
        if cs.iter().zip(plain_out).any(|(&c, &o)| c != 1 && c != o) {
            return None;
        }
        Some(match l {
            Layout::Ane => {
                let (sh, v) = transpose_data(&data, &cs, &[0, 2, 1]);
                (vec![sh[0], sh[1], 1, sh[2]], v)
            }
            Layout::Perm(p) => transpose_data(&data, &cs, &inverse(p)),
        })
    }

    /// Lowers `n` on held values when a rule applies; false leaves it to
    /// the ONNX-layout lowering.
    pub(super) fn lower_ane(&mut self, idx: usize, n: &Node) -> Result<bool> {
        let o0 = n.outputs[0].clone();
        let input = |i: usize| n.inputs.get(i).filter(|s| !s.is_empty()).cloned();
        match n.op_type.as_str() {
            "MatMul" => {
                let (Some(a), Some(b)) = (input(0), input(1)) else { return Ok(false) };
                if let Some(w) = self.constant_tensor(&b).filter(|t| t.rank() == 2) {
                    return self.linear_as_conv(idx, n, &a, w);
                }
                self.attention_matmul(n, &a, &b)
            }
            "LayerNormalization" => {
                let Some((h, Layout::Ane)) = input(0).and_then(|x| self.held(&x)) else { return Ok(false) };
                let axis = n.attr_int_or("axis", -1)?;
                if axis != -1 && axis != 2 {
                    return Ok(false);
                }
                let ty = self.b.ty(&h)?.clone();
                let c = ty.shape[1];
                let (Some(gamma), Some(beta)) = (self.ln_param(n, 1, 1.0, c), self.ln_param(n, 2, 0.0, c)) else {
                    return Ok(false);
                };
                let eps = n.attr_float_or("epsilon", 1e-5)?;
                let y = self.emit_layer_norm(&o0, &h, &[1], &[c], gamma, beta, eps, ty)?;
                self.set_held(&o0, y, Layout::Ane);
                Ok(true)
            }
            "Identity" | "Dropout" => {
                let Some((h, l)) = input(0).and_then(|x| self.held(&x)) else { return Ok(false) };
                self.set_held(&o0, h, l);
                Ok(true)
            }
            "Gelu" => {
                let Some((h, l)) = input(0).and_then(|x| self.held(&x)) else { return Ok(false) };
                let mode = match n.attr_string("approximate")?.as_deref() {
                    Some("tanh") => "TANH_APPROXIMATION",
                    _ => "EXACT",
                };
                let m = self.b.const_str(&format!("{o0}_mode"), mode)?;
                let ty = self.b.ty(&h)?.clone();
                let y = self.b.op1("gelu", &o0, &[("x", &[&h]), ("mode", &[&m])], ty)?;
                self.set_held(&o0, y, l);
                Ok(true)
            }
            op if elementwise_unary(op).is_some() => {
                let Some((h, l)) = input(0).and_then(|x| self.held(&x)) else { return Ok(false) };
                let ty = self.b.ty(&h)?.clone();
                let y = self.b.op1(elementwise_unary(op).expect("checked"), &o0, &[("x", &[&h])], ty)?;
                self.set_held(&o0, y, l);
                Ok(true)
            }
            "Add" | "Sub" | "Mul" | "Div" | "Pow" => self.binary_held(n),
            "Reshape" => {
                let Some(x) = input(0) else { return Ok(false) };
                let Some((h, l)) = self.held(&x) else { return Ok(false) };
                let (Some(from), Some(to)) = (self.g.concrete_shape_of(&x), self.g.concrete_shape_of(&o0)) else {
                    return Ok(false);
                };
                match l {
                    // [B, S, C] → [B, S, H, d]: held [B, C, 1, S] → [B, H, d, S].
                    Layout::Ane if to.len() == 4 && to[..2] == from[..2] && to[2] * to[3] == from[2] => {
                        let y = self.reshape_to(&o0, &h, &[to[0], to[2], to[3], to[1]])?;
                        self.set_held(&o0, y, Layout::Perm(HEADS));
                        Ok(true)
                    }
                    // [B, S, H, d] → [B, S, C]: held [B, H, d, S] → [B, C, 1, S].
                    Layout::Perm(HEADS) if to.len() == 3 && to[..2] == from[..2] && to[2] == from[2] * from[3] => {
                        let y = self.reshape_to(&o0, &h, &[to[0], to[2], 1, to[1]])?;
                        self.set_held(&o0, y, Layout::Ane);
                        Ok(true)
                    }
                    _ => Ok(false),
                }
            }
            "Transpose" => {
                let Some((h, Layout::Perm(p))) = input(0).and_then(|x| self.held(&x)) else { return Ok(false) };
                let Some(perm) = n.attr_ints("perm")? else { return Ok(false) };
                if perm.len() != 4 || perm.iter().any(|&v| !(0..4).contains(&v)) {
                    return Ok(false);
                }
                let q: [usize; 4] = std::array::from_fn(|i| p[perm[i] as usize]);
                if q == IDENTITY {
                    self.set(&o0, h);
                } else {
                    self.set_held(&o0, h, Layout::Perm(q));
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// `MatMul(x [B, S, K], W [K, N])` (+ a following bias `Add`) as a 1x1
    /// convolution on `[B, K, 1, S]`.
    fn linear_as_conv(&mut self, idx: usize, n: &Node, a: &str, w: &Tensor) -> Result<bool> {
        let Some(x) = self.enter_ane(n, a)? else { return Ok(false) };
        let (k, nn) = (w.shape()[0], w.shape()[1]);
        let xt = self.b.ty(&x)?.clone();
        if xt.shape[1] != k {
            return Ok(false);
        }
        let wt = super::out_major_weight(w, false);
        let mut out_name = n.outputs[0].clone();
        let mut bias = None;
        if let Some((ai, add, b)) = self.following_bias_add(idx, &n.outputs[0], nn) {
            bias = Some(b);
            out_name = add.outputs[0].clone();
            self.absorbed.insert(ai);
        }
        let o = out_name.clone();
        let wname = self.weight(&format!("{}_weight", n.name), &[nn, k, 1, 1], wt)?;
        let bias = match bias {
            Some(b) => Some(self.b.const_float(&format!("{}_bias", n.name), self.opts.compute.dtype(), &[nn], b)?),
            None => None,
        };
        let out = TType::new(xt.dtype, &[xt.shape[0], nn, 1, xt.shape[3]]);
        let geom = super::ConvGeometry { strides: vec![1, 1], pads: vec![0; 4], dilations: vec![1, 1], groups: 1 };
        let y = self.emit_conv(&o, x, wname, &geom, bias, out)?;
        self.set_held(&o, y, Layout::Ane);
        Ok(true)
    }

    /// Attention's two products on heads held as `[B, H, d, S]`, one
    /// matmul per head (the split Apple recommends), concatenated on the
    /// head axis:
    /// - scores `q kᵀ` with q held transposed: `matmul(q_h, k_h, transpose_x)`;
    /// - `p v` with v held transposed gives the result held transposed:
    ///   `matmul(v_h, p_h, transpose_y)` = `(p v)ᵀ`.
    fn attention_matmul(&mut self, n: &Node, a: &str, b: &str) -> Result<bool> {
        let o0 = n.outputs[0].clone();
        let (ha, hb) = (self.held(a), self.held(b));
        let plain4 = |s: &Self, v: &str| s.g.concrete_shape_of(v).is_some_and(|sh| sh.len() == 4);
        let (x, y, tx, ty, result_layout) = match (&ha, &hb) {
            (Some((qa, Layout::Perm(HEADS_T))), None) if plain4(self, b) => {
                let kb = self.val(n, b)?;
                (qa.clone(), kb, true, false, None)
            }
            (None, Some((vb, Layout::Perm(HEADS_T)))) if plain4(self, a) => {
                let pa = self.val(n, a)?;
                (vb.clone(), pa, false, true, Some(Layout::Perm(HEADS_T)))
            }
            _ => return Ok(false),
        };
        let (xs, ys) = (self.b.ty(&x)?.clone(), self.b.ty(&y)?.clone());
        let heads = xs.shape[1];
        if ys.shape[1] != heads || xs.shape[0] != ys.shape[0] {
            return Ok(false);
        }
        let m = if tx { xs.shape[3] } else { xs.shape[2] };
        let nn = if ty { ys.shape[2] } else { ys.shape[3] };
        let dt = xs.dtype;
        let split = |s: &mut Self, v: &str, t: &TType, tag: &str| -> Result<Vec<String>> {
            if heads == 1 {
                return Ok(vec![v.to_string()]);
            }
            let sizes = s.b.const_ints(&format!("{o0}_{tag}_head_sizes"), &vec![1; heads])?;
            let ax = s.b.const_int(&format!("{o0}_{tag}_head_axis"), 1)?;
            let mut one = t.shape.clone();
            one[1] = 1;
            s.b.op(
                "split",
                &format!("{o0}_{tag}_heads"),
                &[("x", &[v]), ("split_sizes", &[&sizes]), ("axis", &[&ax])],
                vec![TType::new(t.dtype, &one); heads],
            )
        };
        let xh = split(self, &x, &xs, "x")?;
        let yh = split(self, &y, &ys, "y")?;
        let txc = self.b.const_bool(&format!("{o0}_transpose_x"), tx)?;
        let tyc = self.b.const_bool(&format!("{o0}_transpose_y"), ty)?;
        let per_head = TType::new(dt, &[xs.shape[0], 1, m, nn]);
        let mut outs = Vec::with_capacity(heads);
        for (h, (xi, yi)) in xh.iter().zip(&yh).enumerate() {
            outs.push(self.b.op1(
                "matmul",
                &format!("{o0}_head{h}"),
                &[("x", &[xi]), ("y", &[yi]), ("transpose_x", &[&txc]), ("transpose_y", &[&tyc])],
                per_head.clone(),
            )?);
        }
        let full = TType::new(dt, &[xs.shape[0], heads, m, nn]);
        let r = if heads == 1 {
            outs.remove(0)
        } else {
            let ax = self.b.const_int(&format!("{o0}_heads_axis"), 1)?;
            let il = self.b.const_bool(&format!("{o0}_heads_interleave"), false)?;
            let refs: Vec<&str> = outs.iter().map(|s| s.as_str()).collect();
            self.b.op1("concat", &o0, &[("values", &refs), ("axis", &[&ax]), ("interleave", &[&il])], full)?
        };
        match result_layout {
            Some(l) => self.set_held(&o0, r, l),
            None => {
                let want = self.g.concrete_shape_of(&o0);
                if want.as_deref() != Some(&self.b.ty(&r)?.shape[..]) {
                    return Err(node_err(n, "attention scores have an unexpected shape"));
                }
                self.set(&o0, r)
            }
        }
        Ok(true)
    }

    /// Elementwise binary ops with a held operand: both held alike, or the
    /// other a constant (rearranged at conversion) or, for `Ane`, a plain
    /// `[B, S, C]` value entered into the layout.
    fn binary_held(&mut self, n: &Node) -> Result<bool> {
        let ty = match n.op_type.as_str() {
            "Add" => "add",
            "Sub" => "sub",
            "Mul" => "mul",
            "Div" => "real_div",
            _ => "pow",
        };
        let (a, b) = (&n.inputs[0], &n.inputs[1]);
        let o0 = &n.outputs[0];
        let Some(out_plain) = self.g.concrete_shape_of(o0) else { return Ok(false) };
        let (ha, hb) = (self.held(a), self.held(b));
        let layout = match (&ha, &hb) {
            (Some((_, la)), _) => la.clone(),
            (_, Some((_, lb))) => lb.clone(),
            _ => return Ok(false),
        };
        // Decide every operand before emitting anything, so that a rule
        // that declines leaves no dead operations behind.
        enum Operand {
            Held(String),
            Const(Vec<usize>, Vec<f32>),
            Enter,
        }
        let same = |s: &Self, v: &str| s.g.concrete_shape_of(v).as_deref() == Some(&out_plain[..]);
        let plan = |s: &Self, v: &str| -> Option<Operand> {
            if let Some((h, l)) = s.held(v) {
                return (l == layout && same(s, v)).then_some(Operand::Held(h));
            }
            if let Some(t) = s.constant_tensor(v) {
                if !t.dtype().is_float() {
                    return None;
                }
                return Self::const_held_data(t, &out_plain, &layout).map(|(sh, d)| Operand::Const(sh, d));
            }
            let float = s.g.dtype_of(v).is_some_and(|d| d.is_float());
            (layout == Layout::Ane && same(s, v) && float).then_some(Operand::Enter)
        };
        let (Some(pa), Some(pb)) = (plan(self, a), plan(self, b)) else { return Ok(false) };
        let emit = |s: &mut Self, i: usize, v: &str, p: Operand| -> Result<Option<String>> {
            match p {
                Operand::Held(h) => Ok(Some(h)),
                Operand::Const(sh, d) => {
                    let dt = s.opts.compute.dtype();
                    Ok(Some(s.b.const_float(&format!("{o0}_{i}_held"), dt, &sh, d)?))
                }
                Operand::Enter => s.enter_ane(n, v),
            }
        };
        let Some(x) = emit(self, 0, a, pa)? else { return Ok(false) };
        let Some(y) = emit(self, 1, b, pb)? else { return Ok(false) };
        let held_ty = match (&ha, &hb) {
            (Some((h, _)), _) | (_, Some((h, _))) => self.b.ty(h)?.clone(),
            _ => return Ok(false),
        };
        let dt = self.out_type(n, 0)?.dtype;
        let z = self.b.op1(ty, o0, &[("x", &[&x]), ("y", &[&y])], TType::new(dt, &held_ty.shape))?;
        self.set_held(o0, z, layout);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposing_data_moves_axes() {
        // [2, 3] → [3, 2]
        let (s, v) = transpose_data(&[1., 2., 3., 4., 5., 6.], &[2, 3], &[1, 0]);
        assert_eq!(s, vec![3, 2]);
        assert_eq!(v, vec![1., 4., 2., 5., 3., 6.]);
    }

    #[test]
    fn head_layouts_compose_as_the_exporters_transposes() {
        // Reshape to [B, S, H, d] (HEADS) then Transpose [0, 2, 1, 3] gives
        // [B, H, S, d] = HEADS_T; Transpose [0, 2, 3, 1] gives kᵀ = held.
        let compose = |p: [usize; 4], q: [usize; 4]| -> [usize; 4] { std::array::from_fn(|i| p[q[i]]) };
        assert_eq!(compose(HEADS, [0, 2, 1, 3]), HEADS_T);
        assert_eq!(compose(HEADS, [0, 2, 3, 1]), IDENTITY);
        assert_eq!(compose(HEADS_T, [0, 1, 3, 2]), IDENTITY);
        assert_eq!(compose(HEADS_T, [0, 2, 1, 3]), HEADS);
        assert_eq!(inverse(&HEADS)[HEADS[2]], 2);
    }
}
