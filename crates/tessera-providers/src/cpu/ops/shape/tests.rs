//! Unit tests of the shape operators. Expected values were computed with
//! numpy (and the ONNX reference implementation) and hard-coded.

use tessera_core::{Attr, DType, Node, Result, Tensor};

use crate::cpu::registry::{BuildCtx, OpRegistry, RunCtx};

fn registry() -> OpRegistry {
    let mut r = OpRegistry::new();
    super::register(&mut r);
    r
}

/// Builds and runs `op` at `opset` with `n_out` outputs.
fn run_op(
    op: &str,
    opset: i64,
    attrs: &[(&str, Attr)],
    inputs: &[Option<Tensor>],
    n_out: usize,
) -> Result<Vec<Tensor>> {
    let ins: Vec<String> =
        inputs.iter().enumerate().map(|(i, t)| if t.is_some() { format!("i{i}") } else { String::new() }).collect();
    let outs: Vec<String> = (0..n_out).map(|i| format!("o{i}")).collect();
    let mut node = Node::new(
        op,
        "test_node",
        &ins.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        &outs.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
    );
    for (k, v) in attrs {
        node = node.with_attr(k, v.clone());
    }
    let reg = registry();
    let b = reg.get("", op).expect("op registered");
    let none = |_: &str| None;
    let cpu = b(&node, &BuildCtx { opset, constant: &none })?;
    let refs: Vec<Option<&Tensor>> = inputs.iter().map(|t| t.as_ref()).collect();
    cpu.run(&refs, &mut RunCtx::default())
}

fn run1(op: &str, opset: i64, attrs: &[(&str, Attr)], inputs: &[Option<Tensor>]) -> Result<Tensor> {
    Ok(run_op(op, opset, attrs, inputs, 1)?.remove(0))
}

fn f32t(shape: &[usize], v: &[f32]) -> Option<Tensor> {
    Some(Tensor::from_slice(shape, v).unwrap())
}
fn i64t(shape: &[usize], v: &[i64]) -> Option<Tensor> {
    Some(Tensor::from_slice(shape, v).unwrap())
}
fn i32t(shape: &[usize], v: &[i32]) -> Option<Tensor> {
    Some(Tensor::from_slice(shape, v).unwrap())
}
fn boolt(shape: &[usize], v: &[bool]) -> Option<Tensor> {
    let b: Vec<u8> = v.iter().map(|&x| x as u8).collect();
    Some(Tensor::from_bytes(DType::Bool, shape, &b).unwrap())
}
fn iota(shape: &[usize]) -> Option<Tensor> {
    let n: usize = shape.iter().product();
    f32t(shape, &(0..n).map(|v| v as f32).collect::<Vec<_>>())
}
fn ints(v: &[i64]) -> Attr {
    Attr::Ints(v.to_vec())
}
fn s(v: &str) -> Attr {
    Attr::String(v.as_bytes().to_vec())
}

fn check_f32(t: &Tensor, shape: &[usize], want: &[f32]) {
    assert_eq!(t.dtype(), DType::F32);
    assert_eq!(t.shape(), shape);
    let got = t.as_slice::<f32>().unwrap();
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "element {i}: got {got:?}, want {want:?}");
    }
    assert_eq!(got.len(), want.len());
}
fn check_i64(t: &Tensor, shape: &[usize], want: &[i64]) {
    assert_eq!(t.dtype(), DType::I64);
    assert_eq!(t.shape(), shape);
    assert_eq!(t.as_slice::<i64>().unwrap(), want);
}

fn err_of(r: Result<Vec<Tensor>>) -> String {
    let e = r.expect_err("expected an error").to_string();
    assert!(e.contains("test_node"), "error should name the node: {e}");
    e
}

#[test]
fn reshape_flatten_squeeze_unsqueeze() {
    let y = run1("Reshape", 14, &[], &[iota(&[2, 3, 4]), i64t(&[3], &[0, -1, 2])]).unwrap();
    assert_eq!(y.shape(), &[2, 6, 2]);
    // allowzero keeps an explicit 0 (empty tensor)
    let y = run1("Reshape", 14, &[("allowzero", Attr::Int(1))], &[iota(&[0, 3]), i64t(&[3], &[3, 0, 5])]).unwrap();
    assert_eq!(y.shape(), &[3, 0, 5]);
    err_of(run_op("Reshape", 14, &[], &[iota(&[2, 3]), i64t(&[2], &[4, -1])], 1));
    err_of(run_op("Reshape", 14, &[], &[iota(&[2, 3]), i64t(&[2], &[-1, -1])], 1));
    // opset < 5 reads the attribute
    let y = run1("Reshape", 1, &[("shape", ints(&[3, 2]))], &[iota(&[2, 3])]).unwrap();
    assert_eq!(y.shape(), &[3, 2]);

    let y = run1("Flatten", 13, &[("axis", Attr::Int(-2))], &[iota(&[2, 3, 4])]).unwrap();
    assert_eq!(y.shape(), &[2, 12]);
    let y = run1("Flatten", 13, &[("axis", Attr::Int(0))], &[iota(&[2, 3, 4])]).unwrap();
    assert_eq!(y.shape(), &[1, 24]);
    err_of(run_op("Flatten", 13, &[("axis", Attr::Int(4))], &[iota(&[2, 3, 4])], 1));

    let y = run1("Squeeze", 13, &[], &[iota(&[1, 3, 1, 2]), i64t(&[1], &[-2])]).unwrap();
    assert_eq!(y.shape(), &[1, 3, 2]);
    let y = run1("Squeeze", 13, &[], &[iota(&[1, 3, 1, 2])]).unwrap();
    assert_eq!(y.shape(), &[3, 2]);
    let y = run1("Squeeze", 11, &[("axes", ints(&[0]))], &[iota(&[1, 3])]).unwrap();
    assert_eq!(y.shape(), &[3]);
    err_of(run_op("Squeeze", 13, &[], &[iota(&[1, 3]), i64t(&[1], &[1])], 1));
    err_of(run_op("Squeeze", 13, &[], &[iota(&[1, 3]), i64t(&[1], &[2])], 1));

    let y = run1("Unsqueeze", 13, &[], &[iota(&[3, 4]), i64t(&[2], &[-1, 0])]).unwrap();
    assert_eq!(y.shape(), &[1, 3, 4, 1]);
    let y = run1("Unsqueeze", 11, &[("axes", ints(&[0, -1]))], &[i64t(&[], &[7])]).unwrap();
    assert_eq!(y.shape(), &[1, 1]);
    err_of(run_op("Unsqueeze", 13, &[], &[iota(&[3]), i64t(&[2], &[0, 0])], 1));
    err_of(run_op("Unsqueeze", 13, &[], &[iota(&[3]), i64t(&[1], &[3])], 1));
}

#[test]
fn transpose_general_and_fast_paths() {
    let y = run1("Transpose", 13, &[("perm", ints(&[1, 0, 2]))], &[iota(&[2, 3, 4])]).unwrap();
    let want =
        [0., 1., 2., 3., 12., 13., 14., 15., 4., 5., 6., 7., 16., 17., 18., 19., 8., 9., 10., 11., 20., 21., 22., 23.];
    check_f32(&y, &[3, 2, 4], &want);
    // default perm reverses; bool dtype
    let b = boolt(&[2, 3], &[true, false, false, true, true, false]);
    let y = run1("Transpose", 13, &[], &[b]).unwrap();
    assert_eq!((y.dtype(), y.shape()), (DType::Bool, &[3usize, 2][..]));
    assert_eq!(y.bytes(), &[1, 1, 0, 1, 0, 0]);
    // BSHD -> BHSD and a big 2-D transpose against a naive loop
    let (bb, ss, hh, dd) = (2, 5, 3, 8);
    let x = iota(&[bb, ss, hh, dd]);
    let y = run1("Transpose", 13, &[("perm", ints(&[0, 2, 1, 3]))], &[x]).unwrap();
    let v = y.as_slice::<f32>().unwrap();
    for b in 0..bb {
        for h in 0..hh {
            for s in 0..ss {
                for d in 0..dd {
                    assert_eq!(v[((b * hh + h) * ss + s) * dd + d], (((b * ss + s) * hh + h) * dd + d) as f32);
                }
            }
        }
    }
    let (r, c) = (67, 130);
    let vals: Vec<i64> = (0..(r * c) as i64).collect();
    let y = run1("Transpose", 13, &[], &[i64t(&[r, c], &vals)]).unwrap();
    let v = y.as_slice::<i64>().unwrap();
    for i in 0..c {
        for j in 0..r {
            assert_eq!(v[i * r + j], (j * c + i) as i64);
        }
    }
    // empty and unit dims
    let y = run1("Transpose", 13, &[("perm", ints(&[1, 0]))], &[iota(&[0, 3])]).unwrap();
    assert_eq!(y.shape(), &[3, 0]);
    err_of(run_op("Transpose", 13, &[("perm", ints(&[0, 0]))], &[iota(&[2, 2])], 1));
    err_of(run_op("Transpose", 13, &[("perm", ints(&[0]))], &[iota(&[2, 2])], 1));
}

#[test]
fn concat_and_split() {
    let a = i64t(&[2, 1], &[1, 2]);
    let b = i64t(&[2, 2], &[3, 4, 5, 6]);
    let e = i64t(&[2, 0], &[]);
    let y = run1("Concat", 13, &[("axis", Attr::Int(-1))], &[a.clone(), e, b]).unwrap();
    check_i64(&y, &[2, 3], &[1, 3, 4, 2, 5, 6]);
    err_of(run_op("Concat", 13, &[("axis", Attr::Int(0))], &[a.clone(), i64t(&[1, 2], &[1, 2])], 1));
    err_of(run_op("Concat", 13, &[("axis", Attr::Int(2))], &[a.clone(), a], 1));

    // num_outputs with an uneven last chunk: [0,1,2] [3,4,5] [6]
    let ys = run_op("Split", 18, &[("num_outputs", Attr::Int(3))], &[iota(&[7])], 3).unwrap();
    check_f32(&ys[0], &[3], &[0., 1., 2.]);
    check_f32(&ys[1], &[3], &[3., 4., 5.]);
    check_f32(&ys[2], &[1], &[6.]);
    let ys = run_op("Split", 13, &[("axis", Attr::Int(-1))], &[iota(&[2, 3]), i64t(&[2], &[1, 2])], 2).unwrap();
    check_f32(&ys[0], &[2, 1], &[0., 3.]);
    check_f32(&ys[1], &[2, 2], &[1., 2., 4., 5.]);
    let ys = run_op("Split", 11, &[("split", ints(&[2, 0]))], &[iota(&[2])], 2).unwrap();
    assert_eq!((ys[0].shape(), ys[1].shape()), (&[2usize][..], &[0usize][..]));
    err_of(run_op("Split", 13, &[], &[iota(&[4]), i64t(&[2], &[1, 2])], 2));
}

#[test]
fn slice_negative_steps_and_clamping() {
    // starts [-1, 10], ends [-1e18, 0], axes [-1, 1], steps [-2, -1]
    let y = run1(
        "Slice",
        13,
        &[],
        &[
            iota(&[2, 3, 4]),
            i64t(&[2], &[-1, 10]),
            i64t(&[2], &[-1_000_000_000_000_000_000, 0]),
            i64t(&[2], &[-1, 1]),
            i64t(&[2], &[-2, -1]),
        ],
    )
    .unwrap();
    check_f32(&y, &[2, 2, 2], &[11., 9., 7., 5., 23., 21., 19., 17.]);
    let y = run1("Slice", 13, &[], &[iota(&[5]), i64t(&[1], &[1]), i64t(&[1], &[i64::MAX])]).unwrap();
    check_f32(&y, &[4], &[1., 2., 3., 4.]);
    let y = run1(
        "Slice",
        13,
        &[],
        &[iota(&[5]), i64t(&[1], &[-1]), i64t(&[1], &[i64::MIN]), None, i64t(&[1], &[i64::MIN])],
    )
    .unwrap();
    check_f32(&y, &[1], &[4.]);
    let y = run1("Slice", 13, &[], &[iota(&[5]), i64t(&[1], &[3]), i64t(&[1], &[1])]).unwrap();
    assert_eq!(y.shape(), &[0]);
    let y = run1("Slice", 1, &[("starts", ints(&[1])), ("ends", ints(&[-1])), ("axes", ints(&[1]))], &[iota(&[2, 4])])
        .unwrap();
    check_f32(&y, &[2, 2], &[1., 2., 5., 6.]);
    err_of(run_op("Slice", 13, &[], &[iota(&[5]), i64t(&[1], &[0]), i64t(&[1], &[3]), None, i64t(&[1], &[0])], 1));
    err_of(run_op("Slice", 13, &[], &[iota(&[5]), i64t(&[1], &[0]), i64t(&[1], &[3]), i64t(&[1], &[1])], 1));
}

#[test]
fn gather_family() {
    // negative indices, 2-D indices on axis 1
    let y = run1("Gather", 13, &[("axis", Attr::Int(1))], &[iota(&[2, 3]), i64t(&[2, 2], &[-1, 0, 1, 1])]).unwrap();
    check_f32(&y, &[2, 2, 2], &[2., 0., 1., 1., 5., 3., 4., 4.]);
    let y = run1("Gather", 13, &[], &[iota(&[3]), i32t(&[], &[-3])]).unwrap();
    check_f32(&y, &[], &[0.]);
    let y = run1("Gather", 13, &[], &[iota(&[3, 2]), i64t(&[0], &[])]).unwrap();
    assert_eq!(y.shape(), &[0, 2]);
    let e = err_of(run_op("Gather", 13, &[], &[iota(&[3]), i64t(&[1], &[3])], 1));
    assert!(e.contains("out of range"), "{e}");
    err_of(run_op("Gather", 13, &[], &[iota(&[3]), i64t(&[1], &[-4])], 1));

    let y = run1("GatherElements", 13, &[], &[iota(&[3, 3]), i64t(&[2, 3], &[-1, 0, 1, 2, -3, 0])]).unwrap();
    check_f32(&y, &[2, 3], &[6., 1., 5., 6., 1., 2.]);
    err_of(run_op("GatherElements", 13, &[], &[iota(&[3, 3]), i64t(&[1, 1], &[3])], 1));
    err_of(run_op("GatherElements", 13, &[], &[iota(&[3, 3]), i64t(&[1, 4], &[0, 0, 0, 0])], 1));

    let data: Vec<i32> = (0..12).collect();
    let y = run1(
        "GatherND",
        13,
        &[("batch_dims", Attr::Int(1))],
        &[i32t(&[2, 3, 2], &data), i64t(&[2, 2, 1], &[2, 0, 1, -1])],
    )
    .unwrap();
    assert_eq!(y.shape(), &[2, 2, 2]);
    assert_eq!(y.as_slice::<i32>().unwrap(), &[4, 5, 0, 1, 8, 9, 10, 11]);
    let y = run1("GatherND", 13, &[], &[i32t(&[2, 2], &[0, 1, 2, 3]), i64t(&[2, 2], &[0, 0, 1, 1])]).unwrap();
    assert_eq!(y.as_slice::<i32>().unwrap(), &[0, 3]);
    err_of(run_op("GatherND", 13, &[], &[i32t(&[2, 2], &[0, 1, 2, 3]), i64t(&[1, 2], &[0, 2])], 1));
    err_of(run_op("GatherND", 13, &[], &[i32t(&[2, 2], &[0, 1, 2, 3]), i64t(&[1, 3], &[0, 0, 0])], 1));
}

#[test]
fn scatter_family() {
    let y = run1(
        "ScatterElements",
        18,
        &[("axis", Attr::Int(1)), ("reduction", s("max"))],
        &[i64t(&[2, 3], &[1, 5, 3, 4, 2, 6]), i64t(&[2, 2], &[2, -1, 0, 0]), i64t(&[2, 2], &[7, 9, 0, 8])],
    )
    .unwrap();
    check_i64(&y, &[2, 3], &[1, 5, 9, 8, 2, 6]);
    let y = run1(
        "ScatterND",
        18,
        &[("reduction", s("mul"))],
        &[iota(&[2, 4]), i64t(&[2, 1], &[1, -1]), f32t(&[2, 4], &[2., 2., 2., 2., 0.5, 3., 1., 1.])],
    )
    .unwrap();
    check_f32(&y, &[2, 4], &[0., 1., 2., 3., 4., 30., 12., 14.]);
    let y = run1("ScatterND", 16, &[], &[iota(&[2, 2]), i64t(&[1, 2], &[1, 0]), f32t(&[1], &[9.])]).unwrap();
    check_f32(&y, &[2, 2], &[0., 1., 9., 3.]);
    // bool with "add" behaves as or
    let y = run1(
        "ScatterElements",
        18,
        &[("reduction", s("add"))],
        &[boolt(&[3], &[false, true, false]), i64t(&[2], &[0, 1]), boolt(&[2], &[true, true])],
    )
    .unwrap();
    assert_eq!(y.bytes(), &[1, 1, 0]);
    // deprecated Scatter
    let y = run1("Scatter", 9, &[], &[iota(&[3]), i64t(&[1], &[2]), f32t(&[1], &[7.])]).unwrap();
    check_f32(&y, &[3], &[0., 1., 7.]);
    err_of(run_op("ScatterElements", 18, &[], &[iota(&[3]), i64t(&[1], &[3]), f32t(&[1], &[7.])], 1));
    err_of(run_op("ScatterND", 18, &[], &[iota(&[3]), i64t(&[1, 1], &[-4]), f32t(&[1], &[7.])], 1));
    err_of(run_op("ScatterND", 18, &[], &[iota(&[3]), i64t(&[1, 1], &[0]), f32t(&[2], &[7., 8.])], 1));
}

#[test]
fn expand_tile_pad() {
    let y = run1("Expand", 13, &[], &[f32t(&[2, 1], &[1., 2.]), i64t(&[3], &[2, 1, 3])]).unwrap();
    check_f32(&y, &[2, 2, 3], &[1., 1., 1., 2., 2., 2., 1., 1., 1., 2., 2., 2.]);
    let y = run1("Expand", 13, &[], &[f32t(&[1], &[1.]), i64t(&[2], &[0, 1])]).unwrap();
    assert_eq!(y.shape(), &[0, 1]);
    err_of(run_op("Expand", 13, &[], &[f32t(&[2], &[1., 2.]), i64t(&[1], &[3])], 1));
    err_of(run_op("Expand", 13, &[], &[f32t(&[2], &[1., 2.]), i64t(&[1], &[-2])], 1));

    let y = run1("Tile", 13, &[], &[i64t(&[2, 2], &[1, 2, 3, 4]), i64t(&[2], &[2, 3])]).unwrap();
    check_i64(&y, &[4, 6], &[1, 2, 1, 2, 1, 2, 3, 4, 3, 4, 3, 4, 1, 2, 1, 2, 1, 2, 3, 4, 3, 4, 3, 4]);
    let y = run1("Tile", 13, &[], &[i64t(&[2], &[1, 2]), i64t(&[1], &[0])]).unwrap();
    assert_eq!(y.shape(), &[0]);
    err_of(run_op("Tile", 13, &[], &[i64t(&[2], &[1, 2]), i64t(&[2], &[1, 1])], 1));

    let x = i64t(&[2, 3], &[0, 1, 2, 3, 4, 5]);
    let y = run1("Pad", 13, &[("mode", s("reflect"))], &[x.clone(), i64t(&[4], &[1, 4, 2, 1])]).unwrap();
    check_i64(
        &y,
        &[5, 8],
        &[
            3, 4, 5, 4, 3, 4, 5, 4, 0, 1, 2, 1, 0, 1, 2, 1, 3, 4, 5, 4, 3, 4, 5, 4, 0, 1, 2, 1, 0, 1, 2, 1, 3, 4, 5, 4,
            3, 4, 5, 4,
        ],
    );
    let y = run1("Pad", 19, &[("mode", s("wrap"))], &[x.clone(), i64t(&[4], &[0, 2, 1, 4])]).unwrap();
    check_i64(&y, &[3, 9], &[1, 2, 0, 1, 2, 0, 1, 2, 0, 4, 5, 3, 4, 5, 3, 4, 5, 3, 1, 2, 0, 1, 2, 0, 1, 2, 0]);
    let y = run1("Pad", 13, &[("mode", s("edge"))], &[x.clone(), i64t(&[4], &[1, 0, 0, 2])]).unwrap();
    check_i64(&y, &[3, 5], &[0, 1, 2, 2, 2, 0, 1, 2, 2, 2, 3, 4, 5, 5, 5]);
    // constant value, negative pads crop, axes input (opset 18)
    let y = run1("Pad", 18, &[], &[x.clone(), i64t(&[2], &[-1, 2]), i64t(&[], &[9]), i64t(&[1], &[-1])]).unwrap();
    check_i64(&y, &[2, 4], &[1, 2, 9, 9, 4, 5, 9, 9]);
    // opset 2: pads and value attributes
    let y = run1("Pad", 2, &[("pads", ints(&[1, 0])), ("value", Attr::Float(1.5))], &[f32t(&[1], &[7.])]).unwrap();
    check_f32(&y, &[2], &[1.5, 7.]);
    err_of(run_op("Pad", 13, &[], &[x.clone(), i64t(&[2], &[1, 1])], 1));
    err_of(run_op("Pad", 13, &[], &[x.clone(), i64t(&[4], &[0, -5, 0, 0])], 1));
    err_of(run_op("Pad", 13, &[("mode", s("edge"))], &[i64t(&[0], &[]), i64t(&[2], &[1, 0])], 1));

    let y = run1("CenterCropPad", 18, &[], &[iota(&[3, 5]), i64t(&[2], &[4, 2])]).unwrap();
    check_f32(&y, &[4, 2], &[1., 2., 6., 7., 11., 12., 0., 0.]);
}

#[test]
fn small_factories() {
    let y = run1("Shape", 15, &[("start", Attr::Int(-2))], &[iota(&[2, 3, 4])]).unwrap();
    check_i64(&y, &[2], &[3, 4]);
    let y = run1("Shape", 15, &[("start", Attr::Int(2)), ("end", Attr::Int(1))], &[iota(&[2, 3, 4])]).unwrap();
    check_i64(&y, &[0], &[]);
    let y = run1("Shape", 13, &[], &[iota(&[0, 3])]).unwrap();
    check_i64(&y, &[2], &[0, 3]);
    let y = run1("Size", 13, &[], &[iota(&[2, 0])]).unwrap();
    check_i64(&y, &[], &[0]);

    let v = Tensor::from_slice(&[1], &[7i64]).unwrap();
    let y = run1("ConstantOfShape", 20, &[("value", Attr::Tensor(v))], &[i64t(&[2], &[2, 1])]).unwrap();
    check_i64(&y, &[2, 1], &[7, 7]);
    let y = run1("ConstantOfShape", 20, &[], &[i64t(&[1], &[0])]).unwrap();
    check_f32(&y, &[0], &[]);
    err_of(run_op("ConstantOfShape", 20, &[], &[i64t(&[1], &[-1])], 1));
    err_of(run_op("ConstantOfShape", 20, &[], &[i64t(&[3], &[1 << 30, 1 << 30, 1 << 30])], 1));

    let y = run1("Constant", 13, &[("value_ints", ints(&[1, 2]))], &[]).unwrap();
    check_i64(&y, &[2], &[1, 2]);
    let y = run1("Constant", 13, &[("value_float", Attr::Float(2.5))], &[]).unwrap();
    check_f32(&y, &[], &[2.5]);
    assert!(run_op("Constant", 13, &[("value_string", s("x"))], &[], 1).is_err());

    let y = run1("Range", 11, &[], &[f32t(&[], &[1.]), f32t(&[], &[2.]), f32t(&[], &[0.3])]).unwrap();
    check_f32(&y, &[4], &[1.0, 1.3, 1.6, 1.9]);
    let y = run1("Range", 11, &[], &[i32t(&[], &[10]), i32t(&[], &[-3]), i32t(&[], &[-4])]).unwrap();
    assert_eq!(y.as_slice::<i32>().unwrap(), &[10, 6, 2, -2]);
    let y = run1("Range", 11, &[], &[i64t(&[], &[3]), i64t(&[], &[3]), i64t(&[], &[1])]).unwrap();
    check_i64(&y, &[0], &[]);
    err_of(run_op("Range", 11, &[], &[i64t(&[], &[0]), i64t(&[], &[i64::MAX]), i64t(&[], &[1])], 1));
    err_of(run_op("Range", 11, &[], &[i64t(&[], &[0]), i64t(&[], &[5]), i64t(&[], &[0])], 1));
    err_of(run_op("Range", 11, &[], &[f32t(&[], &[0.]), f32t(&[], &[1e30]), f32t(&[], &[1e-30])], 1));

    let y = run1("EyeLike", 9, &[("k", Attr::Int(-1)), ("dtype", Attr::Int(1))], &[i32t(&[3, 4], &[0; 12])]).unwrap();
    check_f32(&y, &[3, 4], &[0., 0., 0., 0., 1., 0., 0., 0., 0., 1., 0., 0.]);

    // Dropout at inference: identity, mask all true (bool from opset 10)
    let ys = run_op("Dropout", 13, &[], &[f32t(&[2], &[1., 2.])], 2).unwrap();
    check_f32(&ys[0], &[2], &[1., 2.]);
    assert_eq!((ys[1].dtype(), ys[1].bytes()), (DType::Bool, &[1u8, 1][..]));
    let ys = run_op("Dropout", 7, &[("ratio", Attr::Float(0.3))], &[f32t(&[2], &[1., 2.])], 2).unwrap();
    check_f32(&ys[1], &[2], &[1., 1.]);
    let ys = run_op("Dropout", 13, &[], &[f32t(&[2], &[1., 2.]), f32t(&[], &[0.9]), boolt(&[], &[false])], 1).unwrap();
    check_f32(&ys[0], &[2], &[1., 2.]);
}

#[test]
fn one_hot_trilu_nonzero_compress_reverse() {
    let y = run1(
        "OneHot",
        11,
        &[("axis", Attr::Int(1))],
        &[i64t(&[2, 2], &[0, -1, 5, 2]), i64t(&[], &[3]), i32t(&[2], &[2, 7])],
    )
    .unwrap();
    assert_eq!(y.shape(), &[2, 3, 2]);
    assert_eq!(y.as_slice::<i32>().unwrap(), &[7, 2, 2, 2, 2, 7, 2, 2, 2, 2, 2, 7]);
    err_of(run_op("OneHot", 11, &[], &[i64t(&[1], &[0]), i64t(&[], &[0]), i32t(&[2], &[0, 1])], 1));
    err_of(run_op(
        "OneHot",
        11,
        &[("axis", Attr::Int(3))],
        &[i64t(&[1], &[0]), i64t(&[], &[2]), i32t(&[2], &[0, 1])],
        1,
    ));

    let x: Vec<i64> = (1..=12).collect();
    let y = run1("Trilu", 14, &[("upper", Attr::Int(0))], &[i64t(&[3, 4], &x), i64t(&[], &[1])]).unwrap();
    check_i64(&y, &[3, 4], &[1, 2, 0, 0, 5, 6, 7, 0, 9, 10, 11, 12]);
    let y = run1("Trilu", 14, &[], &[i64t(&[3, 4], &x), i64t(&[], &[-1])]).unwrap();
    check_i64(&y, &[3, 4], &[1, 2, 3, 4, 5, 6, 7, 8, 0, 10, 11, 12]);
    let y = run1("Trilu", 14, &[], &[i64t(&[3, 4], &x), i64t(&[], &[i64::MIN])]).unwrap();
    check_i64(&y, &[3, 4], &x);
    let y = run1("Trilu", 14, &[], &[i64t(&[2, 0, 3], &[])]).unwrap();
    assert_eq!(y.shape(), &[2, 0, 3]);
    err_of(run_op("Trilu", 14, &[], &[i64t(&[3], &[1, 2, 3])], 1));

    let y = run1("NonZero", 13, &[], &[f32t(&[2, 3], &[0.0, -0.0, 2.0, f32::NAN, 0.0, 1.0])]).unwrap();
    check_i64(&y, &[2, 3], &[0, 1, 1, 2, 0, 2]);
    let y = run1("NonZero", 13, &[], &[boolt(&[0, 2], &[])]).unwrap();
    check_i64(&y, &[2, 0], &[]);

    let y =
        run1("Compress", 11, &[("axis", Attr::Int(-2))], &[iota(&[3, 2]), boolt(&[3], &[false, true, true])]).unwrap();
    check_f32(&y, &[2, 2], &[2., 3., 4., 5.]);
    let y = run1("Compress", 11, &[], &[iota(&[3, 2]), boolt(&[4], &[true, false, false, true])]).unwrap();
    check_f32(&y, &[2], &[0., 3.]);
    err_of(run_op("Compress", 11, &[("axis", Attr::Int(0))], &[iota(&[2]), boolt(&[3], &[false, false, true])], 1));

    let y = run1(
        "ReverseSequence",
        10,
        &[("batch_axis", Attr::Int(1)), ("time_axis", Attr::Int(0))],
        &[iota(&[3, 2, 2]), i64t(&[2], &[3, 1])],
    )
    .unwrap();
    check_f32(&y, &[3, 2, 2], &[8., 9., 2., 3., 4., 5., 6., 7., 0., 1., 10., 11.]);
    err_of(run_op("ReverseSequence", 10, &[], &[iota(&[3, 2]), i64t(&[2], &[4, 1])], 1));
}

#[test]
fn depth_space() {
    let y = run1("DepthToSpace", 13, &[("blocksize", Attr::Int(2))], &[iota(&[1, 8, 1, 1])]).unwrap();
    check_f32(&y, &[1, 2, 2, 2], &[0., 2., 4., 6., 1., 3., 5., 7.]);
    let y =
        run1("DepthToSpace", 13, &[("blocksize", Attr::Int(2)), ("mode", s("CRD"))], &[iota(&[1, 8, 1, 1])]).unwrap();
    check_f32(&y, &[1, 2, 2, 2], &[0., 1., 2., 3., 4., 5., 6., 7.]);
    let y = run1("SpaceToDepth", 13, &[("blocksize", Attr::Int(2))], &[iota(&[1, 1, 4, 4])]).unwrap();
    check_f32(&y, &[1, 4, 2, 2], &[0., 2., 8., 10., 1., 3., 9., 11., 4., 6., 12., 14., 5., 7., 13., 15.]);
    err_of(run_op("DepthToSpace", 13, &[("blocksize", Attr::Int(2))], &[iota(&[1, 6, 1, 1])], 1));
    err_of(run_op("SpaceToDepth", 13, &[("blocksize", Attr::Int(2))], &[iota(&[1, 1, 3, 4])], 1));
}

#[test]
fn resize_modes() {
    let x = iota(&[1, 1, 2, 3]);
    let e = Some(Tensor::from_slice::<f32>(&[0], &[]).unwrap());
    // nearest, half_pixel, round_prefer_floor, non-integer scales
    let y = run1("Resize", 13, &[], &[x.clone(), e.clone(), f32t(&[4], &[1., 1., 1.7, 2.5])]).unwrap();
    check_f32(&y, &[1, 1, 3, 7], &[0., 0., 0., 1., 1., 2., 2., 0., 0., 0., 1., 1., 2., 2., 3., 3., 3., 4., 4., 5., 5.]);
    let y = run1("Resize", 13, &[("mode", s("linear"))], &[x, e.clone(), f32t(&[4], &[1., 1., 2., 1.5])]).unwrap();
    check_f32(
        &y,
        &[1, 1, 4, 4],
        &[
            0.0, 0.5, 1.1666666, 1.8333334, 0.75, 1.25, 1.9166666, 2.5833333, 2.25, 2.75, 3.4166667, 4.0833335, 3.0,
            3.5, 4.1666665, 4.8333335,
        ],
    );
    let sq: Vec<f32> = (0..9).map(|v| (v * v) as f32).collect();
    let y = run1(
        "Resize",
        13,
        &[("mode", s("cubic")), ("coordinate_transformation_mode", s("align_corners"))],
        &[f32t(&[1, 1, 3, 3], &sq), e.clone(), None, i64t(&[4], &[1, 1, 4, 5])],
    )
    .unwrap();
    check_f32(
        &y,
        &[1, 1, 4, 5],
        &[
            0.0, 0.21875, 1.0, 2.59375, 4.0, 3.1666648, 4.78472, 7.611108, 11.249996, 14.055552, 18.49999, 22.194435,
            28.055544, 34.729153, 39.611095, 36.0, 41.09375, 49.0, 57.71875, 64.0,
        ],
    );
    // integer data is rounded back (pytorch_half_pixel, linear)
    let u8s = Some(Tensor::from_slice::<u8>(&[2, 3], &[0, 255, 10, 100, 3, 7]).unwrap());
    let y = run1(
        "Resize",
        13,
        &[("mode", s("linear")), ("coordinate_transformation_mode", s("pytorch_half_pixel"))],
        &[u8s, e.clone(), f32t(&[2], &[1., 1.5])],
    )
    .unwrap();
    assert_eq!(y.as_slice::<u8>().unwrap(), &[0, 128, 214, 51, 100, 52, 4, 6]);
    // axes (opset 18), nearest ceil, int64 data: exact gather
    let y = run1(
        "Resize",
        18,
        &[("nearest_mode", s("ceil")), ("axes", ints(&[-1])), ("coordinate_transformation_mode", s("asymmetric"))],
        &[i64t(&[1, 4], &[0, 1, 2, 3]), e.clone(), None, i64t(&[1], &[7])],
    )
    .unwrap();
    check_i64(&y, &[1, 7], &[0, 1, 2, 2, 3, 3, 3]);
    // antialiased linear downsampling
    let v: Vec<f32> = (0..8).map(|i| (i as f32).powf(1.5)).collect();
    let y = run1(
        "Resize",
        18,
        &[("mode", s("linear")), ("antialias", Attr::Int(1))],
        &[f32t(&[1, 8], &v), e.clone(), f32t(&[2], &[1., 0.4])],
    )
    .unwrap();
    check_f32(&y, &[1, 3], &[1.1335315, 6.057941, 13.826255]);
    // cubic with exclude_outside and A = -0.5
    let y = run1(
        "Resize",
        13,
        &[("mode", s("cubic")), ("exclude_outside", Attr::Int(1)), ("cubic_coeff_a", Attr::Float(-0.5))],
        &[f32t(&[1, 5], &[1., 4., 2., 8., 5.]), e.clone(), f32t(&[2], &[1., 0.8])],
    )
    .unwrap();
    check_f32(&y, &[1, 4], &[1.2534949, 3.2646484, 6.0576167, 5.279591]);
    // tf_crop_and_resize with extrapolation
    let y = run1(
        "Resize",
        13,
        &[
            ("mode", s("linear")),
            ("coordinate_transformation_mode", s("tf_crop_and_resize")),
            ("extrapolation_value", Attr::Float(-1.0)),
        ],
        &[iota(&[1, 1, 4, 4]), f32t(&[8], &[0., 0., 0.2, 0.6, 1., 1., 1.1, 1.2]), None, i64t(&[4], &[1, 1, 3, 3])],
    )
    .unwrap();
    check_f32(&y, &[1, 1, 3, 3], &[4.2, 5.1, -1., 9.6, 10.5, -1., -1., -1., -1.]);
    // errors: both/neither of scales and sizes, bad scale
    err_of(run_op("Resize", 13, &[], &[iota(&[1, 2]), e.clone()], 1));
    err_of(run_op("Resize", 13, &[], &[iota(&[1, 2]), e.clone(), f32t(&[2], &[1., -2.])], 1));
    err_of(run_op("Resize", 13, &[], &[iota(&[1, 2]), e.clone(), f32t(&[1], &[2.])], 1));
    err_of(run_op("Resize", 13, &[], &[iota(&[1, 2]), e, f32t(&[2], &[1., 2.]), i64t(&[2], &[1, 4])], 1));
}

#[test]
fn upsample_and_resize10() {
    // nearest: floor(y / scale)
    let y = run1("Upsample", 9, &[], &[f32t(&[1, 2], &[1., 3.]), f32t(&[2], &[1., 2.])]).unwrap();
    check_f32(&y, &[1, 4], &[1., 1., 3., 3.]);
    let y = run1(
        "Upsample",
        7,
        &[("scales", Attr::Floats(vec![1., 2.])), ("mode", s("linear"))],
        &[f32t(&[1, 2], &[1., 3.])],
    )
    .unwrap();
    check_f32(&y, &[1, 4], &[1., 2., 3., 3.]);
    let y = run1("Resize", 10, &[], &[iota(&[1, 4]), f32t(&[2], &[1., 0.5])]).unwrap();
    check_f32(&y, &[1, 2], &[0., 2.]);
}

#[test]
fn every_dtype_moves_bytes() {
    for dt in [DType::F16, DType::BF16, DType::F64, DType::I8, DType::U16, DType::U32, DType::U64, DType::Bool] {
        let vals: Vec<f64> = (0..6).map(|v| (v % 2) as f64 + v as f64 * (dt != DType::Bool) as u8 as f64).collect();
        let x = Tensor::from_f64(dt, &[2, 3], &vals).unwrap();
        let y = run1("Transpose", 13, &[], &[Some(x.clone())]).unwrap();
        assert_eq!(y.dtype(), dt);
        let back = run1("Transpose", 13, &[], &[Some(y)]).unwrap();
        assert_eq!(back, x);
        let g = run1("Gather", 13, &[("axis", Attr::Int(1))], &[Some(x.clone()), i64t(&[1], &[-1])]).unwrap();
        assert_eq!(g.to_f64_vec(), vec![vals[2], vals[5]]);
        let c = run1("Concat", 13, &[("axis", Attr::Int(0))], &[Some(x.clone()), Some(x.clone())]).unwrap();
        assert_eq!(c.shape(), &[4, 3]);
        let p = run1("Pad", 13, &[], &[Some(x.clone()), i64t(&[4], &[0, 1, 0, 0])]).unwrap();
        assert_eq!(p.to_f64_vec()[..4], [0.0, vals[0], vals[1], vals[2]]);
        let r = run1("Resize", 13, &[], &[Some(x.clone()), None, f32t(&[2], &[1., 2.])]).unwrap();
        assert_eq!(r.shape(), &[2, 6]);
        assert_eq!(r.to_f64_vec()[..2], [vals[0], vals[0]]);
    }
}

#[test]
fn large_copies_use_the_parallel_paths() {
    // 2-D transpose bigger than the parallel threshold, checked against a naive loop.
    let (r, c) = (700, 600);
    let vals: Vec<f32> = (0..r * c).map(|v| v as f32).collect();
    let y = run1("Transpose", 13, &[], &[f32t(&[r, c], &vals)]).unwrap();
    let v = y.as_slice::<f32>().unwrap();
    for i in (0..c).step_by(7) {
        for j in (0..r).step_by(5) {
            assert_eq!(v[i * r + j], (j * c + i) as f32);
        }
    }
    // strided slice over a large tensor
    let y = run1(
        "Slice",
        13,
        &[],
        &[f32t(&[r, c], &vals), i64t(&[1], &[1]), i64t(&[1], &[i64::MAX]), i64t(&[1], &[1]), i64t(&[1], &[2])],
    )
    .unwrap();
    assert_eq!(y.shape(), &[r, c / 2]);
    let v = y.as_slice::<f32>().unwrap();
    assert_eq!(v[(r - 1) * (c / 2) + 3], ((r - 1) * c + 7) as f32);
}

/// Transposes of random shapes and permutations (some above the parallel
/// threshold) against a naive index computation.
#[test]
fn random_transposes_match_naive() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = |m: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % m) as usize
    };
    for case in 0..60 {
        let rank = 1 + next(5);
        let big = case % 10 == 0;
        let shape: Vec<usize> = (0..rank).map(|_| 1 + next(if big { 70 } else { 40 })).collect();
        let n: usize = shape.iter().product();
        if n > 3_000_000 {
            continue;
        }
        let mut perm: Vec<usize> = (0..rank).collect();
        for i in (1..rank).rev() {
            perm.swap(i, next(i as u64 + 1));
        }
        let vals: Vec<i32> = (0..n as i32).collect();
        let p: Vec<i64> = perm.iter().map(|&v| v as i64).collect();
        let y = run1("Transpose", 13, &[("perm", ints(&p))], &[i32t(&shape, &vals)]).unwrap();
        let out_shape: Vec<usize> = perm.iter().map(|&a| shape[a]).collect();
        assert_eq!(y.shape(), out_shape.as_slice());
        let st = crate::cpu::util::contiguous_strides(&shape);
        let got = y.as_slice::<i32>().unwrap();
        let mut idx = vec![0usize; rank];
        for (flat, &g) in got.iter().enumerate() {
            let mut r = flat;
            for d in (0..rank).rev() {
                idx[d] = r % out_shape[d];
                r /= out_shape[d];
            }
            let src: usize = (0..rank).map(|d| idx[d] * st[perm[d]]).sum();
            assert_eq!(g as usize, src, "shape {shape:?} perm {perm:?} at {flat}");
        }
    }
}
