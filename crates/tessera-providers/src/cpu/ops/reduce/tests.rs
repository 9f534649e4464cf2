//! Unit tests of the reductions, ArgMax/ArgMin, Softmax family, CumSum and
//! TopK (expected values by hand or from numpy).

#![allow(clippy::cloned_ref_to_slice_refs)]

use half::f16;
use tessera_core::{Attr, DType, Tensor};

use crate::cpu::ops::elementwise::tests::{assert_close, run1, run_op, t, tb, vals};

fn ints(v: &[i64]) -> Attr {
    Attr::Ints(v.to_vec())
}

fn axes(v: &[i64]) -> Tensor {
    t(&[v.len()], v.to_vec())
}

/// Naive reduction of a [d0, d1, d2, d3] f64 tensor over a mask, as a reference.
fn naive(x: &[f64], shape: [usize; 4], red: [bool; 4], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let out_dims: Vec<usize> = (0..4).map(|d| if red[d] { 1 } else { shape[d] }).collect();
    let mut out = Vec::new();
    for o0 in 0..out_dims[0] {
        for o1 in 0..out_dims[1] {
            for o2 in 0..out_dims[2] {
                for o3 in 0..out_dims[3] {
                    let mut group = Vec::new();
                    for i0 in 0..shape[0] {
                        for i1 in 0..shape[1] {
                            for i2 in 0..shape[2] {
                                for i3 in 0..shape[3] {
                                    let idx = [i0, i1, i2, i3];
                                    let o = [o0, o1, o2, o3];
                                    if (0..4).all(|d| red[d] || idx[d] == o[d]) {
                                        group.push(x[((i0 * shape[1] + i1) * shape[2] + i2) * shape[3] + i3]);
                                    }
                                }
                            }
                        }
                    }
                    out.push(f(&group));
                }
            }
        }
    }
    out
}

#[test]
fn reduce_sum_axes_keepdims_noop() {
    let x = t(&[3, 2, 2], (1..=12).map(|i| i as f32).collect());
    let y = run1("ReduceSum", 13, &[("keepdims", Attr::Int(0))], &[x.clone(), axes(&[1])]).unwrap();
    assert_eq!(y.shape(), &[3, 2]);
    assert_eq!(vals::<f32>(&y), [4.0, 6.0, 12.0, 14.0, 20.0, 22.0]);
    let y = run1("ReduceSum", 13, &[], &[x.clone(), axes(&[-2])]).unwrap();
    assert_eq!(y.shape(), &[3, 1, 2]);
    // Absent axes reduce everything, or nothing with noop_with_empty_axes.
    let y = run_op("ReduceSum", 13, &[], &[Some(x.clone())]).unwrap();
    assert_eq!((y[0].shape(), vals::<f32>(&y[0])), (&[1usize, 1, 1][..], vec![78.0]));
    let y = run1("ReduceSum", 13, &[("noop_with_empty_axes", Attr::Int(1))], &[x.clone(), axes(&[])]).unwrap();
    assert_eq!(y, x);
    // Before opset 13 the axes are an attribute.
    let y = run1("ReduceSum", 11, &[("axes", ints(&[0, 2])), ("keepdims", Attr::Int(0))], &[x.clone()]).unwrap();
    assert_eq!(vals::<f32>(&y), [1.0 + 2.0 + 5.0 + 6.0 + 9.0 + 10.0, 3.0 + 4.0 + 7.0 + 8.0 + 11.0 + 12.0]);
    assert!(run1("ReduceSum", 13, &[], &[x.clone(), axes(&[3])]).is_err());
    // Integers sum exactly; a scalar reduces to itself.
    let y = run1("ReduceSum", 13, &[("keepdims", Attr::Int(0))], &[t(&[2], vec![i64::MAX - 1, 1]), axes(&[0])]);
    assert_eq!(vals::<i64>(&y.unwrap()), [i64::MAX]);
    let y = run_op("ReduceSum", 13, &[], &[Some(Tensor::scalar(5i32))]).unwrap();
    assert_eq!((y[0].shape().len(), vals::<i32>(&y[0])), (0, vec![5]));
}

#[test]
fn reductions_match_naive_reference() {
    let shape = [2, 3, 4, 5];
    let xs: Vec<f64> = (0..120).map(|i| ((i * 37) % 23) as f64 * 0.25 - 2.0).collect();
    let x32 = t(&shape, xs.iter().map(|&v| v as f32).collect());
    let x64 = t(&shape, xs.clone());
    let masks: [([bool; 4], &[i64]); 6] = [
        ([false, false, false, true], &[3]),
        ([true, false, false, false], &[0]),
        ([false, true, false, true], &[1, -1]),
        ([true, false, true, false], &[2, 0]),
        ([false, true, true, false], &[1, 2]),
        ([true, true, true, true], &[0, 1, 2, 3]),
    ];
    type F = fn(&[f64]) -> f64;
    let kinds: [(&str, F); 10] = [
        ("ReduceSum", |g| g.iter().sum()),
        ("ReduceMean", |g| g.iter().sum::<f64>() / g.len() as f64),
        ("ReduceMax", |g| g.iter().cloned().fold(f64::NEG_INFINITY, f64::max)),
        ("ReduceMin", |g| g.iter().cloned().fold(f64::INFINITY, f64::min)),
        ("ReduceProd", |g| g.iter().product()),
        ("ReduceL1", |g| g.iter().map(|v| v.abs()).sum()),
        ("ReduceL2", |g| g.iter().map(|v| v * v).sum::<f64>().sqrt()),
        ("ReduceSumSquare", |g| g.iter().map(|v| v * v).sum()),
        ("ReduceLogSum", |g| g.iter().sum::<f64>().ln()),
        ("ReduceLogSumExp", |g| g.iter().map(|v| v.exp()).sum::<f64>().ln()),
    ];
    for (red, ax) in masks {
        for (op, f) in kinds {
            let want = naive(&xs, shape, red, f);
            let y = run1(op, 18, &[], &[x64.clone(), axes(ax)]).unwrap();
            let got = vals::<f64>(&y);
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g.is_nan() && w.is_nan()) || g == w || (g - w).abs() <= 1e-9 * (1.0 + w.abs()),
                    "{op} {ax:?}: {g} vs {w}"
                );
            }
            let y = run1(op, 18, &[], &[x32.clone(), axes(ax)]).unwrap();
            let want32: Vec<f32> = want.iter().map(|&v| v as f32).collect();
            assert_close(&vals::<f32>(&y), &want32, 1e-5);
            // Old opsets take the axes as an attribute.
            let y = run1(op, 13, &[("axes", ints(ax))], &[x32.clone()]).unwrap();
            assert_close(&vals::<f32>(&y), &want32, 1e-5);
        }
    }
}

#[test]
fn empty_sets_follow_onnx() {
    let x = t::<f32>(&[2, 0, 4], vec![]);
    let cases: [(&str, f32); 10] = [
        ("ReduceSum", 0.0),
        ("ReduceMean", f32::NAN),
        ("ReduceMax", f32::NEG_INFINITY),
        ("ReduceMin", f32::INFINITY),
        ("ReduceProd", 1.0),
        ("ReduceL1", 0.0),
        ("ReduceL2", 0.0),
        ("ReduceSumSquare", 0.0),
        ("ReduceLogSum", f32::NEG_INFINITY),
        ("ReduceLogSumExp", f32::NEG_INFINITY),
    ];
    for (op, want) in cases {
        let y = run1(op, 18, &[], &[x.clone(), axes(&[1])]).unwrap();
        assert_eq!(y.shape(), &[2, 1, 4]);
        assert_close(&vals::<f32>(&y), &[want; 8], 0.0);
    }
    // Reducing a non-empty axis of an empty tensor gives an empty output.
    let y = run1("ReduceSum", 13, &[], &[x.clone(), axes(&[2])]).unwrap();
    assert_eq!(y.shape(), &[2, 0, 1]);
    let y = run1("ReduceMax", 18, &[], &[t::<i32>(&[0, 3], vec![]), axes(&[0])]).unwrap();
    assert_eq!(vals::<i32>(&y), [i32::MIN; 3]);
    let b = tb(&[2, 0], &[]);
    assert_eq!(vals::<u8>(&run1("ReduceMax", 20, &[], &[b.clone(), axes(&[1])]).unwrap()), [0, 0]);
    assert_eq!(vals::<u8>(&run1("ReduceMin", 20, &[], &[b, axes(&[1])]).unwrap()), [1, 1]);
}

#[test]
fn reduce_other_dtypes() {
    let b = tb(&[2, 2], &[true, false, false, false]);
    let y = run1("ReduceMax", 20, &[], &[b.clone(), axes(&[1])]).unwrap();
    assert_eq!((y.dtype(), vals::<u8>(&y)), (DType::Bool, vec![1, 0]));
    let y = run1("ReduceMin", 20, &[], &[b.clone(), axes(&[1])]).unwrap();
    assert_eq!(vals::<u8>(&y), [0, 0]);
    assert!(run1("ReduceSum", 13, &[], &[b, axes(&[1])]).is_err());
    let h = t(&[2, 2], vec![f16::from_f32(1.5), f16::from_f32(2.0), f16::from_f32(-1.0), f16::from_f32(0.25)]);
    let y = run1("ReduceMean", 18, &[], &[h, axes(&[1])]).unwrap();
    assert_eq!(vals::<f16>(&y), [f16::from_f32(1.75), f16::from_f32(-0.375)]);
    let y = run1("ReduceProd", 18, &[("keepdims", Attr::Int(0))], &[t(&[3], vec![2u8, 3, 50]), axes(&[0])]).unwrap();
    assert_eq!(vals::<u8>(&y), [44]); // 300 wraps like uint8 arithmetic
    let y = run1("ReduceL2", 18, &[], &[t(&[2], vec![3i32, 4]), axes(&[])]).unwrap();
    assert_eq!(vals::<i32>(&y), [5]);
    let y = run1("ReduceMin", 18, &[], &[t(&[3], vec![f32::NAN, 1.0, 2.0]), axes(&[0])]).unwrap();
    assert!(vals::<f32>(&y)[0].is_nan());
    // Large values do not overflow LogSumExp.
    let y = run1("ReduceLogSumExp", 18, &[], &[t(&[2], vec![1000.0f32, 1000.0]), axes(&[0])]).unwrap();
    assert_close(&vals::<f32>(&y), &[1000.0 + std::f32::consts::LN_2], 1e-6);
}

#[test]
fn large_reductions_run_in_parallel() {
    // Inner axis reduced, and outer axis reduced with kept rows, both above the threshold.
    let (r, c) = (300, 700);
    let x: Vec<f32> = (0..r * c).map(|i| ((i * 13) % 101) as f32 * 0.01).collect();
    let xt = t(&[r, c], x.clone());
    let y = vals::<f32>(&run1("ReduceSum", 13, &[("keepdims", Attr::Int(0))], &[xt.clone(), axes(&[1])]).unwrap());
    for i in 0..r {
        let want: f64 = x[i * c..(i + 1) * c].iter().map(|&v| v as f64).sum();
        assert!((y[i] as f64 - want).abs() < 1e-3, "row {i}");
    }
    let y = vals::<f32>(&run1("ReduceMax", 18, &[("keepdims", Attr::Int(0))], &[xt, axes(&[0])]).unwrap());
    for j in 0..c {
        let want = (0..r).map(|i| x[i * c + j]).fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(y[j], want, "column {j}");
    }
    let wide = t(&[2, 1000, 40], (0..80000).map(|i| (i % 7) as f32).collect());
    let y = vals::<f32>(&run1("ReduceMean", 18, &[("keepdims", Attr::Int(0))], &[wide, axes(&[1])]).unwrap());
    let mut want = vec![0f64; 80];
    for i in 0..80000 {
        want[(i / 40000) * 40 + i % 40] += (i % 7) as f64 / 1000.0;
    }
    assert_close(&y, &want.iter().map(|&v| v as f32).collect::<Vec<_>>(), 1e-5);
}

#[test]
fn argmax_argmin() {
    let x = t(&[2, 3], vec![1.0f32, 5.0, 5.0, 7.0, 2.0, 7.0]);
    let y = run1("ArgMax", 13, &[("axis", Attr::Int(1))], &[x.clone()]).unwrap();
    assert_eq!((y.dtype(), y.shape(), vals::<i64>(&y)), (DType::I64, &[2usize, 1][..], vec![1, 0]));
    let last = [("axis", Attr::Int(-1)), ("keepdims", Attr::Int(0)), ("select_last_index", Attr::Int(1))];
    let y = run1("ArgMax", 13, &last, &[x.clone()]).unwrap();
    assert_eq!((y.shape(), vals::<i64>(&y)), (&[2usize][..], vec![2, 2]));
    let y = run1("ArgMin", 13, &[], &[x.clone()]).unwrap();
    assert_eq!((y.shape(), vals::<i64>(&y)), (&[1usize, 3][..], vec![0, 1, 0]));
    let y = run1("ArgMin", 13, &[("axis", Attr::Int(1)), ("keepdims", Attr::Int(0))], &[x]).unwrap();
    assert_eq!(vals::<i64>(&y), [0, 1]);
    let y = run1("ArgMax", 13, &[], &[t(&[3], vec![u64::MAX, 0, u64::MAX])]).unwrap();
    assert_eq!(vals::<i64>(&y), [0]);
    let y = run1("ArgMax", 13, &[], &[t(&[3], vec![1.0f32, f32::NAN, 3.0])]).unwrap();
    assert_eq!(vals::<i64>(&y), [1]);
    assert!(run1("ArgMax", 13, &[("axis", Attr::Int(2))], &[t(&[2], vec![1i32, 2])]).is_err());
    assert!(run1("ArgMax", 13, &[], &[t::<f32>(&[0, 2], vec![])]).is_err());
    let y = run1("ArgMax", 13, &[("axis", Attr::Int(1))], &[t::<f32>(&[0, 2], vec![])]).unwrap();
    assert_eq!(y.shape(), &[0, 1]);
}

#[test]
fn softmax_family_opset_semantics() {
    let x: Vec<f32> = (0..24).map(|i| i as f32 * 0.25 - 2.0).collect();
    let xt = t(&[2, 3, 4], x);
    // Opset 13: along axis 1 only.
    let y = run1("Softmax", 13, &[("axis", Attr::Int(1))], &[xt.clone()]).unwrap();
    assert_close(
        &vals::<f32>(&y)[..8],
        &[0.090_030_57; 4].iter().chain(&[0.244_728_46; 4]).copied().collect::<Vec<_>>(),
        1e-6,
    );
    // Opset 11: coerced to [2, 12].
    let y = run1("Softmax", 11, &[("axis", Attr::Int(1))], &[xt.clone()]).unwrap();
    let want = [
        0.014_881_711,
        0.019_108_497,
        0.024_535_792,
        0.031_504_583,
        0.040_452_68,
        0.051_942_27,
        0.066_695_19,
        0.085_638_33,
    ];
    assert_close(&vals::<f32>(&y)[..8], &want, 1e-6);
    // Default axis: 1 before 13, -1 from 13.
    let d11 = run1("Softmax", 11, &[], &[xt.clone()]).unwrap();
    assert_eq!(d11, y);
    let d13 = vals::<f32>(&run1("Softmax", 13, &[], &[xt.clone()]).unwrap());
    let row: f32 = d13[..4].iter().sum();
    assert!((row - 1.0).abs() < 1e-6);
    let ls = vals::<f32>(&run1("LogSoftmax", 13, &[], &[t(&[1, 3], vec![1.0f32, 2.0, 3.0])]).unwrap());
    assert_close(&ls, &[-2.407_606, -1.407_606, -0.407_606], 1e-6);
    let ls =
        vals::<f32>(&run1("LogSoftmax", 13, &[("axis", Attr::Int(0))], &[t(&[3, 1], vec![1.0f32, 2.0, 3.0])]).unwrap());
    assert_close(&ls, &[-2.407_606, -1.407_606, -0.407_606], 1e-6);
    let big = vals::<f32>(&run1("Softmax", 13, &[], &[t(&[2], vec![10000.0f32, 10001.0])]).unwrap());
    assert_close(&big, &[0.268_941_43, 0.731_058_6], 1e-6);
    let h =
        run1("Hardmax", 13, &[("axis", Attr::Int(0))], &[t(&[3, 2], vec![1.0f64, 4.0, 3.0, 4.0, 3.0, 0.0])]).unwrap();
    assert_eq!(vals::<f64>(&h), [0.0, 1.0, 1.0, 0.0, 0.0, 0.0]);
    let h = run1("Hardmax", 13, &[], &[t(&[2, 2], vec![f16::ONE, f16::ONE, f16::ZERO, f16::ONE])]).unwrap();
    assert_eq!(vals::<f16>(&h), [f16::ONE, f16::ZERO, f16::ZERO, f16::ONE]);
    let e = run1("Softmax", 13, &[], &[t::<f32>(&[2, 0], vec![])]).unwrap();
    assert_eq!(e.shape(), &[2, 0]);
    assert!(run1("Softmax", 13, &[("axis", Attr::Int(3))], &[xt]).is_err());
    assert!(run1("Softmax", 13, &[], &[t(&[2], vec![1i32, 2])]).is_err());
}

#[test]
fn softmax_large_rows_and_columns() {
    let (r, c) = (200, 513);
    let x: Vec<f32> = (0..r * c).map(|i| ((i * 7) % 31) as f32 * 0.3 - 4.0).collect();
    let y = vals::<f32>(&run1("Softmax", 13, &[], &[t(&[r, c], x.clone())]).unwrap());
    let yc = vals::<f32>(&run1("Softmax", 13, &[("axis", Attr::Int(0))], &[t(&[c, r], transpose(&x, r, c))]).unwrap());
    for i in (0..r).step_by(17) {
        let row = &x[i * c..(i + 1) * c];
        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let s: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
        for j in (0..c).step_by(13) {
            let want = ((row[j] as f64 - m).exp() / s) as f32;
            assert!((y[i * c + j] - want).abs() < 1e-7 + 1e-5 * want, "({i},{j})");
            assert!((yc[j * r + i] - want).abs() < 1e-7 + 1e-5 * want, "column ({i},{j})");
        }
    }
}

fn transpose(x: &[f32], r: usize, c: usize) -> Vec<f32> {
    let mut o = vec![0.0; r * c];
    for i in 0..r {
        for j in 0..c {
            o[j * r + i] = x[i * c + j];
        }
    }
    o
}

#[test]
fn cumsum_modes() {
    let x = t(&[5], vec![1.0f64, 2.0, 3.0, 4.0, 5.0]);
    let ax = Tensor::scalar(0i32);
    let run = |attrs: &[(&str, Attr)]| vals::<f64>(&run1("CumSum", 14, attrs, &[x.clone(), ax.clone()]).unwrap());
    assert_eq!(run(&[]), [1.0, 3.0, 6.0, 10.0, 15.0]);
    assert_eq!(run(&[("exclusive", Attr::Int(1))]), [0.0, 1.0, 3.0, 6.0, 10.0]);
    assert_eq!(run(&[("reverse", Attr::Int(1))]), [15.0, 14.0, 12.0, 9.0, 5.0]);
    assert_eq!(run(&[("reverse", Attr::Int(1)), ("exclusive", Attr::Int(1))]), [14.0, 12.0, 9.0, 5.0, 0.0]);
    let m = t(&[2, 3], vec![1i32, 2, 3, 4, 5, 6]);
    let y = run1("CumSum", 14, &[], &[m.clone(), t(&[1], vec![1i64])]).unwrap();
    assert_eq!(vals::<i32>(&y), [1, 3, 6, 4, 9, 15]);
    let y = run1("CumSum", 14, &[], &[m.clone(), Tensor::scalar(-2i64)]).unwrap();
    assert_eq!(vals::<i32>(&y), [1, 2, 3, 5, 7, 9]);
    assert!(run1("CumSum", 14, &[], &[m.clone(), Tensor::scalar(2i64)]).is_err());
    assert!(run1("CumSum", 14, &[], &[m, t(&[2], vec![0i64, 1])]).is_err());
}

#[test]
fn cumprod_modes() {
    let x = t(&[5], vec![1.0f64, 2.0, 3.0, 4.0, 5.0]);
    let ax = Tensor::scalar(0i32);
    let run = |attrs: &[(&str, Attr)]| vals::<f64>(&run1("CumProd", 26, attrs, &[x.clone(), ax.clone()]).unwrap());
    assert_eq!(run(&[]), [1.0, 2.0, 6.0, 24.0, 120.0]);
    assert_eq!(run(&[("exclusive", Attr::Int(1))]), [1.0, 1.0, 2.0, 6.0, 24.0]);
    assert_eq!(run(&[("reverse", Attr::Int(1))]), [120.0, 120.0, 60.0, 20.0, 5.0]);
    assert_eq!(run(&[("reverse", Attr::Int(1)), ("exclusive", Attr::Int(1))]), [120.0, 60.0, 20.0, 5.0, 1.0]);
    let m = t(&[2, 3], vec![1i32, 2, 3, 4, 5, 6]);
    let y = run1("CumProd", 26, &[], &[m.clone(), t(&[1], vec![1i64])]).unwrap();
    assert_eq!(vals::<i32>(&y), [1, 2, 6, 4, 20, 120]);
    let y = run1("CumProd", 26, &[], &[m.clone(), Tensor::scalar(-2i64)]).unwrap();
    assert_eq!(vals::<i32>(&y), [1, 2, 3, 4, 10, 18]);
    assert!(run1("CumProd", 26, &[], &[m, Tensor::scalar(2i64)]).is_err());
}

#[test]
fn topk_order_and_ties() {
    let x = t(&[3, 4], vec![0.0f32, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 11.0, 10.0, 9.0, 8.0]);
    let out = run_op("TopK", 11, &[("axis", Attr::Int(1))], &[Some(x.clone()), Some(t(&[1], vec![3i64]))]).unwrap();
    assert_eq!(out[0].shape(), &[3, 3]);
    assert_eq!(vals::<f32>(&out[0]), [3.0, 2.0, 1.0, 7.0, 6.0, 5.0, 11.0, 10.0, 9.0]);
    assert_eq!(vals::<i64>(&out[1]), [3, 2, 1, 3, 2, 1, 0, 1, 2]);
    let smallest = [("largest", Attr::Int(0)), ("axis", Attr::Int(-1))];
    let out = run_op("TopK", 11, &smallest, &[Some(x.clone()), Some(t(&[1], vec![2i64]))]).unwrap();
    assert_eq!(vals::<f32>(&out[0]), [0.0, 1.0, 4.0, 5.0, 8.0, 9.0]);
    assert_eq!(vals::<i64>(&out[1]), [0, 1, 0, 1, 3, 2]);
    // Ties keep the lower index first, for largest and smallest.
    let same = t(&[6], vec![4i64, 4, 2, 4, 2, 9]);
    let out = run_op("TopK", 11, &[], &[Some(same.clone()), Some(t(&[1], vec![4i64]))]).unwrap();
    assert_eq!((vals::<i64>(&out[0]), vals::<i64>(&out[1])), (vec![9, 4, 4, 4], vec![5, 0, 1, 3]));
    let out = run_op("TopK", 11, &[("largest", Attr::Int(0))], &[Some(same), Some(t(&[1], vec![3i64]))]).unwrap();
    assert_eq!((vals::<i64>(&out[0]), vals::<i64>(&out[1])), (vec![2, 2, 4], vec![2, 4, 0]));
    // Along a middle axis, with k as an attribute (opset 1).
    let m = t(&[2, 3, 2], vec![1u8, 6, 3, 5, 2, 4, 9, 0, 8, 1, 7, 2]);
    let out = run_op("TopK", 1, &[("axis", Attr::Int(1)), ("k", Attr::Int(2))], &[Some(m)]).unwrap();
    assert_eq!(out[0].shape(), &[2, 2, 2]);
    assert_eq!(vals::<u8>(&out[0]), [3, 6, 2, 5, 9, 2, 8, 1]);
    assert_eq!(vals::<i64>(&out[1]), [1, 0, 2, 1, 0, 2, 1, 1]);
    let out = run_op("TopK", 11, &[], &[Some(x.clone()), Some(t(&[1], vec![0i64]))]).unwrap();
    assert_eq!(out[0].shape(), &[3, 0]);
    assert!(run_op("TopK", 11, &[], &[Some(x.clone()), Some(t(&[1], vec![5i64]))]).is_err());
    assert!(run_op("TopK", 11, &[], &[Some(x), Some(t(&[1], vec![-1i64]))]).is_err());
    let nan = t(&[3], vec![1.0f32, f32::NAN, 3.0]);
    let out = run_op("TopK", 11, &[], &[Some(nan), Some(t(&[1], vec![2i64]))]).unwrap();
    assert_eq!(vals::<i64>(&out[1]), [1, 2]);
}
