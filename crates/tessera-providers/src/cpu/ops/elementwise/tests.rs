//! Unit tests of the elementwise operators (expected values computed by
//! hand or with numpy), plus shared helpers for the reduce tests.

#![allow(clippy::cloned_ref_to_slice_refs)]

use half::{bf16, f16};
use proptest::prelude::*;
use tessera_core::dtype::Element;
use tessera_core::{Attr, DType, Node, Result, Tensor};

use super::broadcast::{binary, binary_reference};
use crate::cpu::registry::{BuildCtx, OpRegistry, RunCtx};

/// A registry with only this crate's elementwise and reduce operators.
pub(crate) fn registry() -> OpRegistry {
    let mut r = OpRegistry::new();
    super::register(&mut r);
    crate::cpu::ops::reduce::register(&mut r);
    r
}

/// Builds and runs one node; `None` inputs are omitted optional inputs.
pub(crate) fn run_op(op: &str, opset: i64, attrs: &[(&str, Attr)], inputs: &[Option<Tensor>]) -> Result<Vec<Tensor>> {
    let names: Vec<String> =
        inputs.iter().enumerate().map(|(i, t)| if t.is_some() { format!("i{i}") } else { String::new() }).collect();
    let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let mut node = Node::new(op, "t", &refs, &["y", "z"]);
    for (k, v) in attrs {
        node.attrs.insert(k.to_string(), v.clone());
    }
    let reg = registry();
    let b = reg.get("", op).expect("operator is registered");
    let none = |_: &str| None;
    let ctx = BuildCtx { opset, constant: &none };
    let built = b(&node, &ctx)?;
    let ins: Vec<Option<&Tensor>> = inputs.iter().map(|t| t.as_ref()).collect();
    built.run(&ins, &mut RunCtx::default())
}

/// Runs a single-output node with all inputs present.
pub(crate) fn run1(op: &str, opset: i64, attrs: &[(&str, Attr)], inputs: &[Tensor]) -> Result<Tensor> {
    let ins: Vec<Option<Tensor>> = inputs.iter().cloned().map(Some).collect();
    Ok(run_op(op, opset, attrs, &ins)?.remove(0))
}

pub(crate) fn t<T: Element>(shape: &[usize], v: Vec<T>) -> Tensor {
    Tensor::from_vec(shape, v).unwrap()
}

pub(crate) fn tb(shape: &[usize], v: &[bool]) -> Tensor {
    t(shape, v.iter().map(|&b| b as u8).collect::<Vec<u8>>()).with_dtype(DType::Bool).unwrap()
}

pub(crate) fn vals<T: Element>(t: &Tensor) -> Vec<T> {
    t.as_slice::<T>().unwrap().to_vec()
}

pub(crate) fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = (g.is_nan() && w.is_nan()) || g == w || (g - w).abs() <= tol * (1.0 + w.abs());
        assert!(ok, "element {i}: got {g}, want {w} (all: {got:?})");
    }
}

#[test]
fn add_broadcasting_shapes() {
    let a = t(&[2, 3, 4], (0..24).map(|i| i as f32).collect());
    let b = t(&[4], vec![100.0f32, 200.0, 300.0, 400.0]);
    let y = run1("Add", 14, &[], &[a.clone(), b]).unwrap();
    assert_eq!(y.shape(), &[2, 3, 4]);
    assert_eq!(vals::<f32>(&y)[..5], [100.0, 201.0, 302.0, 403.0, 104.0]);

    // [2,3,1] + [1,4] -> [2,3,4]
    let a = t(&[2, 3, 1], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let b = t(&[1, 4], vec![10.0f32, 20.0, 30.0, 40.0]);
    let y = run1("Add", 14, &[], &[a, b]).unwrap();
    assert_eq!(y.shape(), &[2, 3, 4]);
    assert_eq!(vals::<f32>(&y)[4..8], [12.0, 22.0, 32.0, 42.0]);

    // Scalar on the left, rank 0 result.
    let y = run1("Sub", 14, &[], &[Tensor::scalar(10i32), t(&[3], vec![1i32, 2, 3])]).unwrap();
    assert_eq!(vals::<i32>(&y), [9, 8, 7]);
    let y = run1("Mul", 14, &[], &[Tensor::scalar(3.0f64), Tensor::scalar(2.0f64)]).unwrap();
    assert_eq!(y.shape(), &[] as &[usize]);
    assert_eq!(vals::<f64>(&y), [6.0]);

    // Empty tensors broadcast to empty outputs.
    let y = run1("Add", 14, &[], &[t::<f32>(&[0, 3], vec![]), t(&[3], vec![1.0f32, 2.0, 3.0])]).unwrap();
    assert_eq!(y.shape(), &[0, 3]);
    let y = run1("Add", 14, &[], &[t::<f32>(&[2, 0], vec![]), t(&[1], vec![1.0f32])]).unwrap();
    assert_eq!(y.shape(), &[2, 0]);

    // Incompatible shapes are an error, not a panic.
    let e = run1("Add", 14, &[], &[t(&[2, 3], vec![0f32; 6]), t(&[4], vec![0f32; 4])]).unwrap_err();
    assert!(e.to_string().contains("broadcast"), "{e}");
    let e = run1("Add", 14, &[], &[t(&[2], vec![0f32; 2]), t(&[2], vec![0i32; 2])]).unwrap_err();
    assert!(e.to_string().contains("differ"), "{e}");
}

#[test]
fn integer_arithmetic_wraps_and_truncates() {
    let y = run1("Add", 14, &[], &[t(&[2], vec![127i8, -128]), t(&[2], vec![1i8, -1])]).unwrap();
    assert_eq!(vals::<i8>(&y), [-128, 127]);
    let y = run1("Sub", 14, &[], &[t(&[1], vec![0u8]), t(&[1], vec![1u8])]).unwrap();
    assert_eq!(vals::<u8>(&y), [255]);
    let y = run1("Div", 14, &[], &[t(&[4], vec![-7i32, 7, 7, i32::MIN]), t(&[4], vec![2i32, -2, 0, -1])]).unwrap();
    assert_eq!(vals::<i32>(&y), [-3, -3, 0, i32::MIN]);
    let y = run1("Mul", 14, &[], &[t(&[1], vec![u64::MAX]), t(&[1], vec![2u64])]).unwrap();
    assert_eq!(vals::<u64>(&y), [u64::MAX - 1]);
}

#[test]
fn modulo_semantics() {
    let x = t(&[6], vec![-4i64, 7, 5, 4, -7, 8]);
    let d = t(&[6], vec![2i64, -3, 8, -2, 3, 5]);
    let y = run1("Mod", 13, &[], &[x.clone(), d.clone()]).unwrap();
    assert_eq!(vals::<i64>(&y), [0, -2, 5, 0, 2, 3]);
    let y = run1("Mod", 13, &[("fmod", Attr::Int(1))], &[x, d]).unwrap();
    assert_eq!(vals::<i64>(&y), [0, 1, 5, 0, -1, 3]);
    let y = run1("Mod", 13, &[], &[t(&[2], vec![5u8, 5]), t(&[2], vec![0u8, 3])]).unwrap();
    assert_eq!(vals::<u8>(&y), [0, 2]);

    let x = t(&[6], vec![-4.3f32, 7.2, 5.0, 4.3, -7.2, 8.0]);
    let d = t(&[6], vec![2.1f32, -3.4, 8.0, -2.1, 3.4, 5.0]);
    let y = run1("Mod", 13, &[("fmod", Attr::Int(1))], &[x.clone(), d.clone()]).unwrap();
    assert_close(&vals::<f32>(&y), &[-0.10000038, 0.39999962, 5.0, 0.10000038, -0.39999962, 3.0], 1e-6);
    let y = run1("Mod", 13, &[], &[x, d]).unwrap();
    assert_close(&vals::<f32>(&y), &[1.9999995, -3.0000005, 5.0, -1.9999995, 3.0000005, 3.0], 1e-6);
    // numpy: mod([0,-0,-3,3,inf,1], [-2,2,inf,-inf,2,0]) = [-0, 0, inf, -inf, nan, nan]
    let x = t(&[6], vec![0.0f32, -0.0, -3.0, 3.0, f32::INFINITY, 1.0]);
    let d = t(&[6], vec![-2.0f32, 2.0, f32::INFINITY, f32::NEG_INFINITY, 2.0, 0.0]);
    let y = vals::<f32>(&run1("Mod", 13, &[], &[x, d]).unwrap());
    assert!(y[0] == 0.0 && y[0].is_sign_negative() && y[1] == 0.0 && y[1].is_sign_positive());
    assert_eq!(y[2..4], [f32::INFINITY, f32::NEG_INFINITY]);
    assert!(y[4].is_nan() && y[5].is_nan());
}

#[test]
fn pow_mixed_types() {
    let y = run1("Pow", 15, &[], &[t(&[3], vec![2i32, 3, -2]), t(&[3], vec![0.5f32, 2.0, 3.0])]).unwrap();
    assert_eq!(y.dtype(), DType::I32);
    assert_eq!(vals::<i32>(&y), [1, 9, -8]);
    let y = run1("Pow", 15, &[], &[t(&[3], vec![1.0f32, 2.0, 3.0]), t(&[3], vec![4i64, 5, 6])]).unwrap();
    assert_eq!(vals::<f32>(&y), [1.0, 32.0, 729.0]);
    let y = run1("Pow", 15, &[], &[t(&[2], vec![3i64, 1 << 20]), t(&[2], vec![3i64, 3])]).unwrap();
    assert_eq!(vals::<i64>(&y), [27, 1 << 60]);
    for (e, want) in [(2.0f32, [4.0f32, 0.0625]), (0.5, [2.0f32.sqrt(), 0.5]), (-1.0, [0.5, 4.0])] {
        let y = run1("Pow", 15, &[], &[t(&[2], vec![2.0f32, 0.25]), Tensor::scalar(e)]).unwrap();
        assert_close(&vals::<f32>(&y), &want, 1e-7);
    }
    let y = run1("Pow", 15, &[], &[t(&[2], vec![2.0f32, 9.0]), t(&[2], vec![1.5f32, 0.5])]).unwrap();
    assert_close(&vals::<f32>(&y), &[std::f32::consts::SQRT_2 * 2.0, 3.0], 1e-7);
}

#[test]
fn comparisons_and_logic() {
    let a = t(&[2, 2], vec![1.0f32, 2.0, f32::NAN, 4.0]);
    let b = t(&[2], vec![2.0f32, 2.0]);
    let y = run1("Less", 13, &[], &[a.clone(), b.clone()]).unwrap();
    assert_eq!(y.dtype(), DType::Bool);
    assert_eq!(vals::<u8>(&y), [1, 0, 0, 0]);
    assert_eq!(vals::<u8>(&run1("GreaterOrEqual", 16, &[], &[a.clone(), b.clone()]).unwrap()), [0, 1, 0, 1]);
    assert_eq!(vals::<u8>(&run1("Equal", 13, &[], &[a.clone(), b.clone()]).unwrap()), [0, 1, 0, 0]);
    assert_eq!(vals::<u8>(&run1("LessOrEqual", 16, &[], &[a.clone(), b.clone()]).unwrap()), [1, 1, 0, 0]);
    assert_eq!(vals::<u8>(&run1("Greater", 13, &[], &[a, b]).unwrap()), [0, 0, 0, 1]);
    let y = run1("Equal", 13, &[], &[tb(&[3], &[true, false, true]), tb(&[1], &[true])]).unwrap();
    assert_eq!(vals::<u8>(&y), [1, 0, 1]);
    let y = run1("Less", 13, &[], &[t(&[2], vec![u64::MAX, 1]), t(&[2], vec![1u64, u64::MAX])]).unwrap();
    assert_eq!(vals::<u8>(&y), [0, 1]);

    let x = tb(&[2, 2], &[true, true, false, false]);
    let z = tb(&[2], &[true, false]);
    assert_eq!(vals::<u8>(&run1("And", 7, &[], &[x.clone(), z.clone()]).unwrap()), [1, 0, 0, 0]);
    assert_eq!(vals::<u8>(&run1("Or", 7, &[], &[x.clone(), z.clone()]).unwrap()), [1, 1, 1, 0]);
    assert_eq!(vals::<u8>(&run1("Xor", 7, &[], &[x.clone(), z]).unwrap()), [0, 1, 1, 0]);
    assert_eq!(vals::<u8>(&run1("Not", 1, &[], &[x]).unwrap()), [0, 0, 1, 1]);
    assert!(run1("And", 7, &[], &[t(&[1], vec![1i32]), t(&[1], vec![1i32])]).is_err());
}

#[test]
fn bitwise_and_shifts() {
    let a = t(&[3], vec![0b1100u16, 0xffff, 0]);
    let b = t(&[3], vec![0b1010u16, 0x00ff, 7]);
    assert_eq!(vals::<u16>(&run1("BitwiseAnd", 18, &[], &[a.clone(), b.clone()]).unwrap()), [0b1000, 0xff, 0]);
    assert_eq!(vals::<u16>(&run1("BitwiseOr", 18, &[], &[a.clone(), b.clone()]).unwrap()), [0b1110, 0xffff, 7]);
    assert_eq!(vals::<u16>(&run1("BitwiseXor", 18, &[], &[a.clone(), b]).unwrap()), [0b0110, 0xff00, 7]);
    assert_eq!(vals::<u16>(&run1("BitwiseNot", 18, &[], &[a]).unwrap()), [0xfff3, 0, 0xffff]);
    assert_eq!(vals::<i32>(&run1("BitwiseNot", 18, &[], &[t(&[2], vec![0i32, -1])]).unwrap()), [-1, 0]);

    let left = [("direction", Attr::String(b"LEFT".to_vec()))];
    let right = [("direction", Attr::String(b"RIGHT".to_vec()))];
    let y = run1("BitShift", 11, &left, &[t(&[3], vec![16u8, 4, 1]), t(&[3], vec![1u8, 2, 3])]).unwrap();
    assert_eq!(vals::<u8>(&y), [32, 16, 8]);
    // Out-of-range shift amounts saturate (numpy), signed right shifts are arithmetic.
    let x = t(&[3], vec![-8i8, 4, -1]);
    let y = run1("BitShift", 11, &right, &[x.clone(), t(&[3], vec![8i8, 9, 127])]).unwrap();
    assert_eq!(vals::<i8>(&y), [-1, 0, -1]);
    let y = run1("BitShift", 11, &left, &[x.clone(), t(&[3], vec![-1i8, 8, 127])]).unwrap();
    assert_eq!(vals::<i8>(&y), [0, 0, 0]);
    let y = run1("BitShift", 11, &left, &[t(&[3], vec![64i8, 1, -64]), t(&[3], vec![1i8, 7, 1])]).unwrap();
    assert_eq!(vals::<i8>(&y), [-128, -128, -128]);
    let y = run1("BitShift", 11, &right, &[x, t(&[3], vec![1i8, 1, 0])]).unwrap();
    assert_eq!(vals::<i8>(&y), [-4, 2, -1]);
    let y = run1("BitShift", 11, &right, &[t(&[1], vec![u64::MAX]), t(&[1], vec![64u64])]).unwrap();
    assert_eq!(vals::<u64>(&y), [0]);
    assert!(run_op("BitShift", 11, &[], &[Some(t(&[1], vec![1u8])), Some(t(&[1], vec![1u8]))]).is_err());
}

#[test]
fn variadic_ops() {
    let a = t(&[3], vec![3.0f32, 2.0, 1.0]);
    let b = t(&[1], vec![2.0f32]);
    let c = t(&[2, 1], vec![0.0f32, 10.0]);
    let y = run1("Max", 13, &[], &[a.clone(), b.clone(), c.clone()]).unwrap();
    assert_eq!(y.shape(), &[2, 3]);
    assert_eq!(vals::<f32>(&y), [3.0, 2.0, 2.0, 10.0, 10.0, 10.0]);
    let y = run1("Min", 13, &[], &[a.clone(), b.clone()]).unwrap();
    assert_eq!(vals::<f32>(&y), [2.0, 2.0, 1.0]);
    let y = run1("Sum", 13, &[], &[a.clone(), b.clone(), c]).unwrap();
    assert_eq!(vals::<f32>(&y), [5.0, 4.0, 3.0, 15.0, 14.0, 13.0]);
    let y = run1("Mean", 13, &[], &[a.clone(), b]).unwrap();
    assert_eq!(vals::<f32>(&y), [2.5, 2.0, 1.5]);
    let y = run1("Mean", 13, &[], &[a.clone()]).unwrap();
    assert_eq!(vals::<f32>(&y), [3.0, 2.0, 1.0]);
    // NaN propagates like numpy's maximum.
    let y = run1("Max", 13, &[], &[t(&[2], vec![f32::NAN, 1.0]), t(&[2], vec![1.0f32, f32::NAN])]).unwrap();
    assert!(vals::<f32>(&y).iter().all(|v| v.is_nan()));
    let y = run1("Max", 13, &[], &[t(&[2], vec![-5i64, 7]), t(&[2], vec![3i64, -9])]).unwrap();
    assert_eq!(vals::<i64>(&y), [3, 7]);
    let y = run1("Min", 13, &[], &[t(&[2], vec![f16::from_f32(1.5), f16::from_f32(-2.0)]), t(&[1], vec![f16::ZERO])]);
    assert_eq!(vals::<f16>(&y.unwrap()), [f16::ZERO, f16::from_f32(-2.0)]);
    assert!(run_op("Sum", 13, &[], &[]).is_err());
}

#[test]
fn where_broadcasts_three_ways() {
    let c = tb(&[2, 1], &[true, false]);
    let x = t(&[3], vec![1i64, 2, 3]);
    let y = t(&[2, 3], vec![10i64, 20, 30, 40, 50, 60]);
    let out = run1("Where", 16, &[], &[c, x, y]).unwrap();
    assert_eq!(out.shape(), &[2, 3]);
    assert_eq!(vals::<i64>(&out), [1, 2, 3, 40, 50, 60]);
    let out = run1("Where", 16, &[], &[tb(&[2], &[false, true]), tb(&[1], &[true]), tb(&[1], &[false])]).unwrap();
    assert_eq!(out.dtype(), DType::Bool);
    assert_eq!(vals::<u8>(&out), [0, 1]);
    let out = run1(
        "Where",
        16,
        &[],
        &[tb(&[2, 2], &[true, false, true, true]), t(&[2, 2], vec![1.0f32, 2.0, 3.0, 4.0]), Tensor::scalar(9.0f32)],
    )
    .unwrap();
    assert_eq!(vals::<f32>(&out), [1.0, 9.0, 3.0, 4.0]);
    assert!(run1("Where", 16, &[], &[t(&[1], vec![1u8]), Tensor::scalar(1.0f32), Tensor::scalar(2.0f32)]).is_err());
}

#[test]
fn prelu_broadcasts_slope() {
    let x = t(&[2, 3], vec![-1.0f32, 2.0, -3.0, 4.0, -5.0, 0.0]);
    let s = t(&[3], vec![0.1f32, 0.2, 0.3]);
    let y = run1("PRelu", 16, &[], &[x.clone(), s]).unwrap();
    assert_close(&vals::<f32>(&y), &[-0.1, 2.0, -0.90000004, 4.0, -1.0, 0.0], 1e-7);
    let y = run1("PRelu", 16, &[], &[t(&[3], vec![-4i32, 0, 5]), Tensor::scalar(2i32)]).unwrap();
    assert_eq!(vals::<i32>(&y), [-8, 0, 5]);
    // The slope may not enlarge the output.
    assert!(run1("PRelu", 16, &[], &[t(&[3], vec![1.0f32; 3]), t(&[2, 3], vec![1.0f32; 6])]).is_err());
}

#[test]
fn legacy_broadcast_with_axis() {
    let a = t(&[2, 3, 2], (0..12).map(|i| i as f32).collect());
    let b = t(&[3], vec![100.0f32, 200.0, 300.0]);
    let attrs = [("broadcast", Attr::Int(1)), ("axis", Attr::Int(1))];
    let y = run1("Add", 6, &attrs, &[a.clone(), b.clone()]).unwrap();
    assert_eq!(vals::<f32>(&y)[..6], [100.0, 101.0, 202.0, 203.0, 304.0, 305.0]);
    let bad = [("broadcast", Attr::Int(1)), ("axis", Attr::Int(2))];
    assert!(run1("Add", 6, &bad, &[a, b]).is_err());
}

#[test]
fn cast_every_kind_of_pair() {
    let x = t(&[5], vec![1.9f32, -1.9, 0.5, -0.0, 300.7]);
    assert_eq!(vals::<i32>(&run1("Cast", 13, &[("to", Attr::Int(6))], &[x.clone()]).unwrap()), [1, -1, 0, 0, 300]);
    assert_eq!(vals::<u8>(&run1("Cast", 13, &[("to", Attr::Int(9))], &[x.clone()]).unwrap()), [1, 1, 1, 0, 1]);
    let y = run1("Cast", 13, &[("to", Attr::Int(9))], &[t(&[2], vec![256i32, 0])]).unwrap();
    assert_eq!(y.dtype(), DType::Bool);
    assert_eq!(vals::<u8>(&y), [1, 0]);
    let y = run1("Cast", 13, &[("to", Attr::Int(1))], &[tb(&[2], &[true, false])]).unwrap();
    assert_eq!(vals::<f32>(&y), [1.0, 0.0]);
    let y = run1("Cast", 13, &[("to", Attr::Int(3))], &[t(&[3], vec![300i64, -129, 127])]).unwrap();
    assert_eq!(vals::<i8>(&y), [44, 127, 127]);
    let y = run1("Cast", 13, &[("to", Attr::Int(7))], &[t(&[2], vec![f32::NAN, 1e30])]).unwrap();
    assert_eq!(vals::<i64>(&y), [0, i64::MAX]);
    let y = run1("Cast", 13, &[("to", Attr::Int(10))], &[t(&[4], vec![1.0f32 + 3.0 / 2048.0, 65519.0, 65520.0, 1e-8])])
        .unwrap();
    let back: Vec<f32> = vals::<f16>(&y).iter().map(|v| v.to_f32()).collect();
    assert_eq!(back, [1.0 + 1.0 / 512.0, 65504.0, f32::INFINITY, 0.0]);
    let y = run1("Cast", 13, &[("to", Attr::Int(16))], &[t(&[1], vec![3.0f64])]).unwrap();
    assert_eq!(vals::<bf16>(&y), [bf16::from_f32(3.0)]);
    let y = run1("Cast", 13, &[("to", Attr::Int(13))], &[t(&[1], vec![bf16::from_f32(-2.5)])]).unwrap();
    assert_eq!(vals::<u64>(&y), [0]);
    let y = run1("Cast", 13, &[("to", Attr::Int(11))], &[t(&[1], vec![u64::MAX])]).unwrap();
    assert_eq!(vals::<f64>(&y), [u64::MAX as f64]);
    let y = run1("CastLike", 15, &[], &[t(&[2], vec![1i32, 2]), t::<f64>(&[0], vec![])]).unwrap();
    assert_eq!(vals::<f64>(&y), [1.0, 2.0]);
    let y = run1("Cast", 1, &[("to", Attr::String(b"INT64".to_vec()))], &[t(&[2], vec![2.7f32, -2.7])]).unwrap();
    assert_eq!(vals::<i64>(&y), [2, -2]);
    assert!(run1("Cast", 1, &[("to", Attr::String(b"QUUX".to_vec()))], &[x.clone()]).is_err());
    // Unsupported target types fail at build time.
    assert!(run1("Cast", 13, &[("to", Attr::Int(8))], &[x.clone()]).is_err());
    assert!(run1("Cast", 13, &[], &[x]).is_err());
}

#[test]
fn unary_float_functions() {
    let v = t(&[6], vec![-3.0f32, -0.5, 0.0, 0.3, 1.7, 9.0]);
    let check = |op: &str, attrs: &[(&str, Attr)], want: &[f32], tol: f32| {
        let y = run1(op, 20, attrs, &[v.clone()]).unwrap();
        assert_close(&vals::<f32>(&y), want, tol);
        // f64 and f16 go through the other paths.
        let v64 = t(&[6], vals::<f32>(&v).iter().map(|&x| x as f64).collect());
        let y = run1(op, 20, attrs, &[v64]).unwrap();
        let got: Vec<f32> = vals::<f64>(&y).iter().map(|&x| x as f32).collect();
        assert_close(&got, want, tol.max(1e-6));
        let v16 = t(&[6], vals::<f32>(&v).iter().map(|&x| f16::from_f32(x)).collect());
        let y = run1(op, 20, attrs, &[v16]).unwrap();
        let got: Vec<f32> = vals::<f16>(&y).iter().map(|x| x.to_f32()).collect();
        let want16: Vec<f32> = want.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
        assert_close(&got, &want16, 2e-3);
    };
    check("Erf", &[], &[-0.9999779, -0.5204999, 0.0, 0.32862678, 0.98379046, 1.0], 2e-7);
    check("Gelu", &[], &[-0.004049694, -0.15426877, 0.0, 0.18537344, 1.6242387, 9.0], 1e-6);
    check("Softplus", &[], &[0.04858735, 0.474077, std::f32::consts::LN_2, 0.8543553, 1.867786, 9.000123], 1e-6);
    check("Mish", &[], &[-0.14564747, -0.22074378, 0.0, 0.20800138, 1.6207681, 9.0], 1e-6);
    check("Selu", &[], &[-1.6705687, -0.6917582, 0.0, 0.3152103, 1.7861918, 9.456309], 1e-6);
    check("HardSwish", &[], &[-0.0, -0.20833333, 0.0, 0.165, 1.3316667, 9.0], 1e-6);
    check("Swish", &[], &[-0.14227762, -0.18877033, 0.0, 0.17233276, 1.437409, 8.998889], 1e-6);
    check(
        "Swish",
        &[("alpha", Attr::Float(0.5))],
        &[-0.54727657, -0.21891175, 0.0, 0.16122895, 1.1909641, 8.901118],
        1e-6,
    );
    check("Sigmoid", &[], &[0.047425874, 0.37754068, 0.5, 0.5744425, 0.8455347, 0.9998766], 1e-6);
    check("Tanh", &[], &[-0.9950548, -0.46211717, 0.0, 0.29131263, 0.935409, 0.99999994], 1e-6);
    check("Relu", &[], &[0.0, 0.0, 0.0, 0.3, 1.7, 9.0], 0.0);
    check("LeakyRelu", &[("alpha", Attr::Float(0.1))], &[-0.3, -0.05, 0.0, 0.3, 1.7, 9.0], 1e-7);
    check("ThresholdedRelu", &[("alpha", Attr::Float(1.0))], &[0.0, 0.0, 0.0, 0.0, 1.7, 9.0], 0.0);
    check("Shrink", &[("lambd", Attr::Float(1.0)), ("bias", Attr::Float(0.5))], &[-2.5, 0.0, 0.0, 0.0, 1.2, 8.5], 1e-7);
    check("HardSigmoid", &[], &[0.0, 0.4, 0.5, 0.56, 0.84, 1.0], 1e-7);
    check("Softsign", &[], &[-0.75, -1.0 / 3.0, 0.0, 0.3 / 1.3, 1.7 / 2.7, 0.9], 1e-7);
    check("Elu", &[("alpha", Attr::Float(2.0))], &[-1.9004259, -0.78693868, 0.0, 0.3, 1.7, 9.0], 1e-6);
    check("Celu", &[("alpha", Attr::Float(2.0))], &[-1.5537397, -0.44239843, 0.0, 0.3, 1.7, 9.0], 1e-6);
    check("Sign", &[], &[-1.0, -1.0, 0.0, 1.0, 1.0, 1.0], 0.0);
    let tanh_gelu = [("approximate", Attr::String(b"tanh".to_vec()))];
    check("Gelu", &tanh_gelu, &[-0.003_637_392, -0.154_286, 0.0, 0.185_370_92, 1.624_106, 9.0], 1e-6);

    let r = t(&[8], vec![0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4, -0.0]);
    let y = vals::<f32>(&run1("Round", 11, &[], &[r]).unwrap());
    assert_eq!(y, [0.0, 2.0, 2.0, -0.0, -2.0, -2.0, 2.0, -0.0]);
    let s = t(&[4], vec![-1.5f32, 1.5, f32::NAN, f32::INFINITY]);
    assert_close(
        &vals::<f32>(&run1("Floor", 13, &[], &[s.clone()]).unwrap()),
        &[-2.0, 1.0, f32::NAN, f32::INFINITY],
        0.0,
    );
    assert_close(
        &vals::<f32>(&run1("Ceil", 13, &[], &[s.clone()]).unwrap()),
        &[-1.0, 2.0, f32::NAN, f32::INFINITY],
        0.0,
    );
    assert_eq!(vals::<u8>(&run1("IsNaN", 13, &[], &[s.clone()]).unwrap()), [0, 0, 1, 0]);
    let inf = t(&[4], vec![f32::NEG_INFINITY, 1.0, f32::NAN, f32::INFINITY]);
    assert_eq!(vals::<u8>(&run1("IsInf", 10, &[], &[inf.clone()]).unwrap()), [1, 0, 0, 1]);
    let pos_only = [("detect_negative", Attr::Int(0))];
    assert_eq!(vals::<u8>(&run1("IsInf", 10, &pos_only, &[inf]).unwrap()), [0, 0, 0, 1]);
    let y = vals::<f32>(&run1("Exp", 13, &[], &[t(&[3], vec![0.0f32, 1.0, -1.0])]).unwrap());
    assert_close(&y, &[1.0, std::f32::consts::E, 0.36787945], 2e-7);
    let y = vals::<f32>(&run1("Reciprocal", 13, &[], &[t(&[2], vec![4.0f32, -0.5])]).unwrap());
    assert_eq!(y, [0.25, -2.0]);
    let y = vals::<f32>(&run1("Sqrt", 13, &[], &[t(&[2], vec![4.0f32, -1.0])]).unwrap());
    assert!(y[0] == 2.0 && y[1].is_nan());
    for (op, f) in [
        ("Sin", f64::sin as fn(f64) -> f64),
        ("Cos", f64::cos),
        ("Tan", f64::tan),
        ("Asin", f64::asin),
        ("Acos", f64::acos),
        ("Atan", f64::atan),
        ("Sinh", f64::sinh),
        ("Cosh", f64::cosh),
        ("Asinh", f64::asinh),
        ("Atanh", f64::atanh),
        ("Log", f64::ln),
    ] {
        let xs = [0.1f32, 0.5, 0.9];
        let y = vals::<f32>(&run1(op, 13, &[], &[t(&[3], xs.to_vec())]).unwrap());
        let want: Vec<f32> = xs.iter().map(|&x| f(x as f64) as f32).collect();
        assert_close(&y, &want, 1e-6);
    }
    let y = vals::<f32>(&run1("Acosh", 13, &[], &[t(&[2], vec![1.0f32, 2.0])]).unwrap());
    assert_close(&y, &[0.0, 1.316958], 1e-6);
}

#[test]
fn unary_integer_paths() {
    let x = t(&[4], vec![-5i32, 0, 7, i32::MIN]);
    assert_eq!(vals::<i32>(&run1("Abs", 13, &[], &[x.clone()]).unwrap()), [5, 0, 7, i32::MIN]);
    assert_eq!(vals::<i32>(&run1("Neg", 13, &[], &[x.clone()]).unwrap()), [5, 0, -7, i32::MIN]);
    assert_eq!(vals::<i32>(&run1("Sign", 13, &[], &[x.clone()]).unwrap()), [-1, 0, 1, -1]);
    assert_eq!(vals::<i32>(&run1("Relu", 14, &[], &[x.clone()]).unwrap()), [0, 0, 7, 0]);
    let sh = [("lambd", Attr::Float(1.5)), ("bias", Attr::Float(1.0))];
    assert_eq!(vals::<i32>(&run1("Shrink", 9, &sh, &[t(&[4], vec![-5i32, 1, 2, -1])]).unwrap()), [-4, 0, 1, 0]);
    assert_eq!(vals::<u8>(&run1("Sign", 13, &[], &[t(&[2], vec![0u8, 9])]).unwrap()), [0, 1]);
    // Float-only operators reject integers with an error.
    assert!(run1("Exp", 13, &[], &[x.clone()]).is_err());
    assert!(run1("Not", 1, &[], &[x]).is_err());
}

#[test]
fn clip_attributes_and_inputs() {
    let x = t(&[5], vec![-3.0f32, -1.0, 0.0, 2.0, f32::NAN]);
    let attrs = [("min", Attr::Float(-1.5)), ("max", Attr::Float(1.0))];
    let y = vals::<f32>(&run1("Clip", 6, &attrs, &[x.clone()]).unwrap());
    assert_close(&y, &[-1.5, -1.0, 0.0, 1.0, f32::NAN], 0.0);
    let y = run_op("Clip", 13, &[], &[Some(x.clone()), None, Some(Tensor::scalar(0.5f32))]).unwrap();
    assert_close(&vals::<f32>(&y[0]), &[-3.0, -1.0, 0.0, 0.5, f32::NAN], 0.0);
    // min > max gives max everywhere (numpy clip).
    let y = run1("Clip", 13, &[], &[x.clone(), Tensor::scalar(2.0f32), Tensor::scalar(1.0f32)]).unwrap();
    assert_close(&vals::<f32>(&y)[..4], &[1.0, 1.0, 1.0, 1.0], 0.0);
    let xi = t(&[4], vec![-128i8, -5, 5, 127]);
    let y = run_op("Clip", 13, &[], &[Some(xi.clone()), Some(Tensor::scalar(-6i8))]).unwrap();
    assert_eq!(vals::<i8>(&y[0]), [-6, -5, 5, 127]);
    let y = run_op("Clip", 13, &[], &[Some(xi.clone())]).unwrap();
    assert_eq!(vals::<i8>(&y[0]), [-128, -5, 5, 127]);
    let big = t(&[2], vec![i64::MAX, i64::MAX - 1]);
    let y = run1("Clip", 13, &[], &[big, Tensor::scalar(0i64), Tensor::scalar(i64::MAX - 1)]).unwrap();
    assert_eq!(vals::<i64>(&y), [i64::MAX - 1, i64::MAX - 1]);
    assert!(run1("Clip", 13, &[], &[x, t(&[2], vec![0.0f32, 1.0])]).is_err());
}

#[test]
fn large_inputs_take_the_parallel_paths() {
    let n = 3 * 65536 + 17;
    let x: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 * 0.01 - 5.0).collect();
    let y = run1("Tanh", 13, &[], &[t(&[n], x.clone())]).unwrap();
    let got = vals::<f32>(&y);
    for i in (0..n).step_by(997) {
        assert!((got[i] - x[i].tanh()).abs() < 1e-6);
    }
    let a = t(&[n], x.clone());
    let b = t(&[1], vec![2.0f32]);
    let y = vals::<f32>(&run1("Mul", 14, &[], &[a, b]).unwrap());
    assert!(y.iter().zip(&x).all(|(&p, &q)| p == 2.0 * q));
}

/// The fast broadcasting engine against per-element index vectors, on
/// shapes whose output exceeds the parallel threshold.
#[test]
fn broadcast_engine_matches_reference_on_large_shapes() {
    let node = Node::new("Add", "t", &[], &[]);
    let shapes: [(&[usize], &[usize]); 4] =
        [(&[64, 33, 40], &[33, 1]), (&[1, 300, 257], &[300, 1]), (&[70000], &[1]), (&[3, 1, 150, 160], &[2, 1, 160])];
    for (sa, sb) in shapes {
        let na: usize = sa.iter().product();
        let nb: usize = sb.iter().product();
        let a: Vec<f32> = (0..na).map(|i| i as f32).collect();
        let b: Vec<f32> = (0..nb).map(|i| (i * 7) as f32 * 0.5).collect();
        let (rs, want) = binary_reference(&node, &a, sa, &b, sb, |x: f32, y: f32| x * 3.0 - y).unwrap();
        let ta = t(sa, a);
        let tbb = t(sb, b);
        let got = binary::<f32, f32, f32>(&node, &ta, &tbb, sb, DType::F32, &mut RunCtx::default(), |x, y| x * 3.0 - y)
            .unwrap();
        assert_eq!(got.shape(), rs.as_slice());
        assert_eq!(vals::<f32>(&got), want, "{sa:?} + {sb:?}");
    }
}

/// Two shapes that broadcast together: an output shape, then each input
/// keeps a suffix of it with some dimensions set to 1.
fn broadcast_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    prop::collection::vec(0usize..5, 0..5).prop_flat_map(|out| {
        let r = out.len();
        (Just(out), 0..=r, 0..=r, prop::collection::vec(any::<bool>(), r), prop::collection::vec(any::<bool>(), r))
            .prop_map(|(out, ra, rb, ma, mb)| {
                let pick = |rank: usize, mask: &[bool]| -> Vec<usize> {
                    (out.len() - rank..out.len()).map(|d| if mask[d] { 1 } else { out[d] }).collect()
                };
                (pick(ra, &ma), pick(rb, &mb))
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn fast_broadcast_matches_generic((sa, sb) in broadcast_pair(), seed in 0u32..1000) {
        let node = Node::new("Sub", "t", &[], &[]);
        let na: usize = sa.iter().product();
        let nb: usize = sb.iter().product();
        let a: Vec<f32> = (0..na).map(|i| ((i as u32 * 31 + seed) % 97) as f32 - 40.0).collect();
        let b: Vec<f32> = (0..nb).map(|i| ((i as u32 * 17 + seed) % 89) as f32 * 0.5).collect();
        let (rs, want) = binary_reference(&node, &a, &sa, &b, &sb, |x: f32, y: f32| x - y).unwrap();
        let got = binary::<f32, f32, f32>(&node, &t(&sa, a), &t(&sb, b.clone()), &sb, DType::F32,
            &mut RunCtx::default(), |x, y| x - y).unwrap();
        prop_assert_eq!(got.shape(), rs.as_slice());
        prop_assert_eq!(vals::<f32>(&got), want);
        // The operator itself agrees as well.
        let na2: usize = sa.iter().product();
        let a2: Vec<f32> = (0..na2).map(|i| ((i as u32 * 31 + seed) % 97) as f32 - 40.0).collect();
        let op = run1("Sub", 14, &[], &[t(&sa, a2), t(&sb, b)]).unwrap();
        prop_assert_eq!(op.shape(), rs.as_slice());
    }
}

/// Rough throughput of the hot f32 paths. Run in release:
/// `cargo test --release -p tessera-providers --lib elementwise::tests::bench -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_f32_paths() {
    fn time(label: &str, elems: usize, mut f: impl FnMut()) {
        f();
        let reps = 20;
        let t0 = std::time::Instant::now();
        for _ in 0..reps {
            f();
        }
        let dt = t0.elapsed().as_secs_f64() / reps as f64;
        eprintln!("{label:<32} {:8.3} ms  {:7.3} ns/elem", dt * 1e3, dt * 1e9 / elems as f64);
    }
    let (b, s, h) = (8, 512, 768);
    let n = b * s * h;
    let x = t(&[b, s, h], (0..n).map(|i| ((i % 977) as f32) * 0.01 - 4.0).collect());
    let y = t(&[b, s, h], (0..n).map(|i| ((i % 613) as f32) * 0.02 - 6.0).collect());
    let row = t(&[h], (0..h).map(|i| i as f32 * 0.001).collect());
    let col = t(&[b, s, 1], (0..b * s).map(|i| i as f32 * 0.001).collect());
    let sc = Tensor::scalar(1.5f32);
    time("RunCtx::alloc (zeroed)", n, || drop(RunCtx::default().alloc(DType::F32, &[b, s, h]).unwrap()));
    let mut pre = vec![0f32; n];
    let (xs, ys) = (vals::<f32>(&x), vals::<f32>(&y));
    time("kernel: add into buffer", n, || {
        super::scalar::map(&xs, &mut pre, |v| v + 1.0);
    });
    let node = Node::new("Add", "t", &[], &[]);
    let plan = super::broadcast::Plan::new(&node, [x.shape(), row.shape()]).unwrap();
    let rs = vals::<f32>(&row);
    time("kernel: [B,S,H]+[H] into buffer", n, || {
        super::broadcast::binary_into(&plan, &xs, &rs, &mut pre, |p, q| p + q);
    });
    time("kernel: tanh into buffer", n, || {
        super::scalar::map(&ys, &mut pre, tessera_kernels::elementwise::tanh_f32);
    });
    time("kernel: gelu into buffer", n, || {
        super::scalar::map(&ys, &mut pre, tessera_kernels::elementwise::gelu_erf_f32);
    });
    time("Add same shape", n, || drop(run1("Add", 14, &[], &[x.clone(), y.clone()]).unwrap()));
    time("Add [B,S,H]+[H]", n, || drop(run1("Add", 14, &[], &[x.clone(), row.clone()]).unwrap()));
    time("Mul [B,S,H]*[B,S,1]", n, || drop(run1("Mul", 14, &[], &[x.clone(), col.clone()]).unwrap()));
    time("Mul scalar", n, || drop(run1("Mul", 14, &[], &[x.clone(), sc.clone()]).unwrap()));
    time("Pow ^2", n, || drop(run1("Pow", 15, &[], &[x.clone(), Tensor::scalar(2.0f32)]).unwrap()));
    time("Where", n, || {
        let c = tb(&[h], &(0..h).map(|i| i % 3 == 0).collect::<Vec<_>>());
        drop(run1("Where", 16, &[], &[c, x.clone(), y.clone()]).unwrap())
    });
    for op in ["Relu", "Exp", "Tanh", "Sigmoid", "Erf", "Gelu", "Sqrt"] {
        time(op, n, || drop(run1(op, 20, &[], &[x.clone()]).unwrap()));
    }
    time("Softmax last axis", n, || drop(run1("Softmax", 13, &[], &[x.clone()]).unwrap()));
    time("Softmax axis 1", n, || drop(run1("Softmax", 13, &[("axis", Attr::Int(1))], &[x.clone()]).unwrap()));
    let ax = t(&[1], vec![-1i64]);
    time("ReduceMean last axis", n, || drop(run1("ReduceMean", 18, &[], &[x.clone(), ax.clone()]).unwrap()));
    let ax0 = t(&[1], vec![1i64]);
    time("ReduceSum axis 1", n, || drop(run1("ReduceSum", 13, &[], &[x.clone(), ax0.clone()]).unwrap()));
    time("Cast f32->f16", n, || drop(run1("Cast", 13, &[("to", Attr::Int(10))], &[x.clone()]).unwrap()));
}
