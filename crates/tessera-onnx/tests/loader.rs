//! Loader and writer tests: a model saved by Python onnx, round trips of
//! graphs built in Rust, typed tensor fields, external data inside and
//! outside the model folder, functions and bounds.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use prost::bytes::Bytes;
use prost::Message;
use tessera_core::{Attr, DType, Dim, Error, Graph, Node, Tensor, ValueInfo};
use tessera_onnx::proto::{self, tensor_shape_proto, type_proto, AttributeProto, NodeProto, TensorProto};
use tessera_onnx::{load_model, load_model_bytes, load_tensor_proto, model_to_bytes, save_model, tensor_to_bytes};

// ---------------------------------------------------------------------------
// Helpers.

/// A fresh folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "tessera-onnx-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn vi_proto(name: &str, elem: i32, dims: Option<&[Dim]>) -> proto::ValueInfoProto {
    use tensor_shape_proto::dimension::Value;
    proto::ValueInfoProto {
        name: name.into(),
        r#type: Some(proto::TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem,
                shape: dims.map(|d| proto::TensorShapeProto {
                    dim: d
                        .iter()
                        .map(|d| tensor_shape_proto::Dimension {
                            value: match d {
                                Dim::Known(n) => Some(Value::DimValue(*n as i64)),
                                Dim::Sym(s) => Some(Value::DimParam(s.clone())),
                                Dim::Unknown => None,
                            },
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node_proto(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn opset(domain: &str, version: i64) -> proto::OperatorSetIdProto {
    proto::OperatorSetIdProto { domain: domain.into(), version }
}

/// y = Identity(initializer `w`), as model bytes.
fn model_with_initializer(t: TensorProto) -> Vec<u8> {
    let name = t.name.clone();
    proto::ModelProto {
        ir_version: 8,
        opset_import: vec![opset("", 17)],
        graph: Some(proto::GraphProto {
            node: vec![node_proto("Identity", "id", &[&name], &["y"])],
            initializer: vec![t],
            output: vec![vi_proto("y", 1, None)],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

fn external(name: &str, dims: &[i64], location: &str, offset: Option<u64>, length: Option<u64>) -> TensorProto {
    let mut entries = vec![("location", location.to_string())];
    if let Some(o) = offset {
        entries.push(("offset", o.to_string()));
    }
    if let Some(l) = length {
        entries.push(("length", l.to_string()));
    }
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: 1,
        data_location: 1,
        external_data: entries
            .into_iter()
            .map(|(k, v)| proto::StringStringEntryProto { key: k.into(), value: v })
            .collect(),
        ..Default::default()
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn err_of<T: std::fmt::Debug>(r: tessera_core::Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

// ---------------------------------------------------------------------------
// A model saved by Python onnx (scripts/make_hostile_corpus.py).

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

#[test]
fn loads_a_model_saved_by_python_onnx() {
    let m = load_model(&fixture("python_features.onnx")).unwrap();
    assert_eq!(m.ir_version, 8);
    assert_eq!(m.producer, "make_hostile_corpus 1.0");
    assert_eq!(m.doc, "fixture made by onnx.helper");
    assert!(m.metadata.contains(&("author".into(), "tessera".into())));
    let g = &m.graph;
    assert_eq!(g.name, "python_features");
    assert_eq!(g.opsets.get(""), Some(&17));
    assert_eq!(g.opsets.get("local"), Some(&1));

    // `scale` is an initializer listed as an input: a constant.
    assert_eq!(g.inputs.len(), 1);
    let x = &g.inputs[0];
    assert_eq!(x.name, "x");
    assert_eq!(x.dtype, Some(DType::F32));
    assert_eq!(x.shape, Some(vec![Dim::Sym("batch".into()), Dim::Known(1), Dim::Unknown, Dim::Known(3)]));
    assert_eq!(
        g.outputs[0].shape,
        Some(vec![Dim::Sym("batch".into()), Dim::Known(1), Dim::Known(2), Dim::Sym("w".into())])
    );
    assert_eq!(g.value_info["xs"].shape.as_ref().map(|s| s.len()), Some(4));
    assert_eq!(g.value_info["const"].dtype, Some(DType::I64));

    let init = |n: &str| g.initializers.get(n).unwrap_or_else(|| panic!("no initializer {n}"));
    assert_eq!(init("raw_f32").shape(), &[1, 3]);
    assert_eq!(init("raw_f32").to_f64_vec(), vec![1.5, -2.0, 3.25]);
    assert_eq!(init("f32_typed").to_f64_vec(), vec![0.5, 1.5, -2.5]);
    assert_eq!(init("f16_typed").dtype(), DType::F16);
    assert_eq!(init("f16_typed").to_f64_vec(), vec![1.5, -2.0]);
    assert_eq!(init("bf16_typed").dtype(), DType::BF16);
    assert_eq!(init("bf16_typed").to_f64_vec(), vec![1.5, -2.0]);
    assert_eq!(init("i8_typed").to_i64_vec().unwrap(), vec![-128, 0, 127]);
    assert_eq!(init("u8_typed").to_i64_vec().unwrap(), vec![0, 255]);
    assert_eq!(init("bool_typed").dtype(), DType::Bool);
    assert_eq!(init("bool_typed").to_i64_vec().unwrap(), vec![1, 0, 1]);
    assert_eq!(init("i16_typed").to_i64_vec().unwrap(), vec![-300, 300]);
    assert_eq!(init("i32_typed").to_i64_vec().unwrap(), vec![-7, 7]);
    assert_eq!(init("i64_typed").to_i64_vec().unwrap(), vec![-(1 << 40), 1 << 40]);
    assert_eq!(init("u32_typed").dtype(), DType::U32);
    assert_eq!(init("u32_typed").as_slice::<u32>().unwrap(), &[1, 4_000_000_000]);
    assert_eq!(init("u64_typed").as_slice::<u64>().unwrap(), &[1 << 63]);
    assert_eq!(init("f64_typed").as_slice::<f64>().unwrap(), &[0.25, -1e300]);
    assert_eq!(init("empty_f32").shape(), &[0, 4]);
    assert_eq!(init("scale").to_f64_vec(), vec![2.0]);

    // The ScaleShift function call is inlined; `alpha` comes from the call,
    // `bias` from the function's default.
    assert!(g.nodes.iter().all(|n| n.op_type != "ScaleShift"), "function call left in the graph");
    let consts: Vec<&Node> = g.nodes.iter().filter(|n| n.op_type == "Constant" && n.name.contains('/')).collect();
    assert_eq!(consts.len(), 2, "{:?}", g.nodes.iter().map(|n| &n.name).collect::<Vec<_>>());
    let mut vals: Vec<f32> = consts.iter().map(|n| n.attr_float("value_float").unwrap().unwrap()).collect();
    vals.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert_eq!(vals, vec![0.5, 3.0]);
    let mul = g.nodes.iter().find(|n| n.op_type == "Mul" && n.name.ends_with("/mul")).unwrap();
    assert_eq!(mul.inputs[0], "xs");
    let add = g.nodes.iter().find(|n| n.op_type == "Add").unwrap();
    assert_eq!(add.outputs, vec!["ss".to_string()]);
    assert_eq!(add.inputs[0], mul.outputs[0]);

    let conv = g.nodes.iter().find(|n| n.op_type == "Conv").unwrap();
    assert_eq!(conv.attrs["kernel_shape"], Attr::Ints(vec![1, 3]));
    assert_eq!(conv.attrs["auto_pad"], Attr::String(b"NOTSET".to_vec()));
    assert_eq!(conv.attrs["alpha"], Attr::Float(0.25));
    assert_eq!(conv.attrs["group"], Attr::Int(1));
    assert_eq!(conv.attrs["names"], Attr::Strings(vec![b"a".to_vec(), b"b".to_vec()]));
    assert_eq!(conv.attrs["scales"], Attr::Floats(vec![0.5, 0.25]));
    let c = g.nodes.iter().find(|n| n.outputs == ["const"]).unwrap();
    assert_eq!(c.attr_tensor("value").unwrap().unwrap().to_i64_vec().unwrap(), vec![4, 5]);

    // Unnamed nodes get "<op>_<index>"; every name is unique.
    assert!(g.nodes.iter().any(|n| n.name == "Identity_4"));
    let mut names: Vec<&str> = g.nodes.iter().map(|n| n.name.as_str()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), g.nodes.len());
    // Topological order: the Identity reading `conv` comes after the Conv.
    let pos = |op: &str| g.nodes.iter().position(|n| n.op_type == op).unwrap();
    assert!(pos("Conv") < pos("Identity"));
}

// ---------------------------------------------------------------------------
// Round trips.

fn sample_graph() -> Graph {
    let w = Tensor::from_vec(&[2, 3], vec![1.0f32, -2.0, 3.0, 4.5, 5.0, -6.25]).unwrap();
    let h = Tensor::from_vec(&[2], vec![half::f16::from_f32(1.5), half::f16::from_f32(-0.25)]).unwrap();
    let b = Tensor::from_vec(&[3], vec![1u8, 0, 1]).unwrap().with_dtype(DType::Bool).unwrap();
    let shape = Tensor::from_vec(&[2], vec![-1i64, 3]).unwrap();
    let empty = Tensor::zeros(DType::F32, &[0, 5]).unwrap();
    let nodes = vec![
        Node::new("MatMul", "mm", &["x", "w"], &["t"]),
        Node::new("Reshape", "rs", &["t", "shape"], &["r"]).with_attr("allowzero", Attr::Int(0)),
        Node::new("LeakyRelu", "lr", &["r"], &["y"]).with_attr("alpha", Attr::Float(0.125)),
        Node::new("Custom", "cu", &["y", "", "h"], &["z", ""])
            .with_attr("f", Attr::Float(-1.5))
            .with_attr("i", Attr::Int(-7))
            .with_attr("s", Attr::String(b"hello".to_vec()))
            .with_attr("t", Attr::Tensor(Tensor::from_vec(&[2], vec![7i32, 8]).unwrap()))
            .with_attr("fs", Attr::Floats(vec![0.5, 1.5]))
            .with_attr("is", Attr::Ints(vec![1, -2, 3]))
            .with_attr("ss", Attr::Strings(vec![b"a".to_vec(), Vec::new()]))
            .with_attr("empty_ints", Attr::Ints(vec![])),
    ];
    let mut nodes = nodes;
    nodes[3].domain = "com.example".into();
    let mut g = Graph {
        name: "sample".into(),
        nodes,
        inputs: vec![ValueInfo {
            name: "x".into(),
            dtype: Some(DType::F32),
            shape: Some(vec![Dim::Sym("batch".into()), Dim::Known(2)]),
        }],
        outputs: vec![ValueInfo {
            name: "z".into(),
            dtype: Some(DType::F32),
            shape: Some(vec![Dim::Unknown, Dim::Known(3)]),
        }],
        ..Default::default()
    };
    for (n, t) in [("w", w), ("h", h), ("b", b), ("shape", shape), ("empty", empty)] {
        g.initializers.insert(n.into(), t);
    }
    g.value_info.insert(
        "t".into(),
        ValueInfo {
            name: "t".into(),
            dtype: Some(DType::F32),
            shape: Some(vec![Dim::Sym("batch".into()), Dim::Known(3)]),
        },
    );
    g.value_info.insert("r".into(), ValueInfo { name: "r".into(), dtype: None, shape: None });
    g.opsets.insert("".into(), 13);
    g.opsets.insert("com.example".into(), 1);
    g
}

fn assert_same_graph(a: &Graph, b: &Graph) {
    assert_eq!(a.name, b.name);
    assert_eq!(a.nodes, b.nodes);
    assert_eq!(a.inputs, b.inputs);
    assert_eq!(a.outputs, b.outputs);
    assert_eq!(a.opsets, b.opsets);
    assert_eq!(a.initializers.len(), b.initializers.len());
    for (k, t) in &a.initializers {
        assert_eq!(Some(t), b.initializers.get(k), "initializer {k}");
    }
    assert_eq!(a.value_info, b.value_info);
}

#[test]
fn round_trip_through_bytes_and_files() {
    let g = sample_graph();
    let bytes = model_to_bytes(&g).unwrap();
    let m = load_model_bytes(&bytes, None).unwrap();
    assert_eq!(m.ir_version, 8);
    assert_eq!(m.producer, format!("tessera {}", env!("CARGO_PKG_VERSION")));
    assert_same_graph(&g, &m.graph);

    let dir = TempDir::new("roundtrip");
    let path = dir.path().join("sample.onnx");
    save_model(&g, &path).unwrap();
    let m2 = load_model(&path).unwrap();
    assert_same_graph(&g, &m2.graph);
    // Saving what was loaded gives the same bytes.
    assert_eq!(model_to_bytes(&m2.graph).unwrap(), bytes);
}

#[test]
fn large_initializers_stay_in_the_memory_map() {
    let mut g = Graph::default();
    let w = Tensor::from_vec(&[1024], (0..1024).map(|i| i as f32).collect()).unwrap();
    g.initializers.insert("w".into(), w.clone());
    g.nodes.push(Node::new("Identity", "id", &["w"], &["y"]));
    g.outputs.push(ValueInfo { name: "y".into(), ..Default::default() });
    let dir = TempDir::new("mapped");
    let path = dir.path().join("m.onnx");
    save_model(&g, &path).unwrap();
    let m = load_model(&path).unwrap();
    let t = &m.graph.initializers["w"];
    assert_eq!(t, &w);
    // from_mmap copies only when the window is misaligned for f32.
    let data = std::fs::read(&path).unwrap();
    let off = data.windows(8).position(|s| s == f32_bytes(&[1.0, 2.0])).unwrap() - 4;
    assert_eq!(t.is_mapped(), off % 4 == 0);
}

#[test]
fn ir_version_follows_the_opset() {
    let mut g = sample_graph();
    g.opsets.insert("".into(), 21);
    let m = load_model_bytes(&model_to_bytes(&g).unwrap(), None).unwrap();
    assert_eq!(m.ir_version, 10);
    g.opsets.clear();
    let m = load_model_bytes(&model_to_bytes(&g).unwrap(), None).unwrap();
    assert_eq!(m.graph.opset(), tessera_onnx::save::DEFAULT_OPSET);
}

#[test]
fn subgraph_attributes_cannot_be_saved() {
    let mut g = sample_graph();
    g.nodes[0].attrs.insert("then_branch".into(), Attr::Graph);
    let e = err_of(model_to_bytes(&g));
    assert!(e.contains("mm") && e.contains("then_branch"), "{e}");
}

// ---------------------------------------------------------------------------
// Tensor fields.

#[test]
fn typed_fields_and_test_data_tensors() {
    // f16 through int32_data (bit patterns in the low 16 bits).
    let t = TensorProto {
        name: "h".into(),
        dims: vec![3],
        data_type: 10,
        int32_data: vec![0x3e00, 0xc000, 0x7c00],
        ..Default::default()
    };
    let (name, h) = load_tensor_proto(&t.encode_to_vec()).unwrap();
    assert_eq!(name, "h");
    assert_eq!(h.dtype(), DType::F16);
    assert_eq!(h.to_f64_vec(), vec![1.5, -2.0, f64::INFINITY]);

    let t = TensorProto { dims: vec![2, 2], data_type: 2, int32_data: vec![0, 1, 200, 255], ..Default::default() };
    assert_eq!(load_tensor_proto(&t.encode_to_vec()).unwrap().1.to_i64_vec().unwrap(), vec![0, 1, 200, 255]);
    let t = TensorProto { dims: vec![1], data_type: 12, uint64_data: vec![u32::MAX as u64], ..Default::default() };
    assert_eq!(load_tensor_proto(&t.encode_to_vec()).unwrap().1.as_slice::<u32>().unwrap(), &[u32::MAX]);
    let t = TensorProto { dims: vec![], data_type: 7, int64_data: vec![-5], ..Default::default() };
    let s = load_tensor_proto(&t.encode_to_vec()).unwrap().1;
    assert_eq!((s.shape(), s.to_i64_vec().unwrap()), (&[][..], vec![-5]));

    // tensor_to_bytes / load_tensor_proto round trip.
    let v = Tensor::from_vec(&[2, 2], vec![1.0f64, 2.0, 3.0, 4.0]).unwrap();
    let (n, back) = load_tensor_proto(&tensor_to_bytes("v", &v)).unwrap();
    assert_eq!((n.as_str(), back), ("v", v));

    // Zero-size tensors need no data.
    let t = TensorProto { dims: vec![3, 0], data_type: 1, ..Default::default() };
    assert_eq!(load_tensor_proto(&t.encode_to_vec()).unwrap().1.shape(), &[3, 0]);
}

#[test]
fn tensor_bounds_are_checked() {
    let check = |t: TensorProto, want: &str| {
        let e = err_of(load_tensor_proto(&t.encode_to_vec()));
        assert!(e.contains(want), "expected {want:?} in {e:?}");
    };
    let f = |dims: Vec<i64>, raw: usize| TensorProto {
        name: "t".into(),
        dims,
        data_type: 1,
        raw_data: Bytes::from(vec![0u8; raw]),
        ..Default::default()
    };
    check(f(vec![-3], 12), "tensor 't' has negative dimension -3");
    check(f(vec![1 << 40], 4), "more than the limit");
    check(f(vec![1 << 30, 1 << 30], 4), "has more than");
    check(f(vec![i64::MAX, i64::MAX], 4), "more than the limit");
    check(f(vec![1; 65], 4), "rank 65");
    check(f(vec![2], 7), "raw_data has 7 bytes, but shape [2] of f32 needs 8");
    check(
        TensorProto { dims: vec![2], data_type: 1, float_data: vec![1.0], ..Default::default() },
        "float_data has 1 values",
    );
    check(
        TensorProto { dims: vec![2], data_type: 10, float_data: vec![1.0, 2.0], ..Default::default() },
        "expected int32_data",
    );
    check(
        TensorProto { dims: vec![1], data_type: 8, string_data: vec![b"x".to_vec()], ..Default::default() },
        "string tensor",
    );
    check(TensorProto { dims: vec![1], data_type: 14, ..Default::default() }, "complex");
    check(TensorProto { dims: vec![1], data_type: 17, ..Default::default() }, "float8");
    check(external("t", &[1], "w.bin", None, None), "loaded from memory");
    assert!(matches!(
        load_tensor_proto(&TensorProto { dims: vec![1], data_type: 8, ..Default::default() }.encode_to_vec()),
        Err(Error::Unsupported(_))
    ));
    // A bogus buffer.
    assert!(load_tensor_proto(&[0x0a, 0xff]).is_err());
}

// ---------------------------------------------------------------------------
// Shapes and value infos.

#[test]
fn symbolic_and_invalid_dims_in_value_infos() {
    let model = |dims: &[Dim], raw_dim: Option<i64>| {
        let mut x = vi_proto("x", 1, Some(dims));
        if let (Some(v), Some(type_proto::Value::TensorType(tt))) =
            (raw_dim, x.r#type.as_mut().and_then(|t| t.value.as_mut()))
        {
            tt.shape.as_mut().unwrap().dim.push(tensor_shape_proto::Dimension {
                value: Some(tensor_shape_proto::dimension::Value::DimValue(v)),
                ..Default::default()
            });
        }
        proto::ModelProto {
            ir_version: 8,
            opset_import: vec![opset("ai.onnx", 17)],
            graph: Some(proto::GraphProto {
                node: vec![node_proto("Relu", "", &["x"], &["y"])],
                input: vec![x],
                output: vec![vi_proto("y", 0, None)],
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    };
    let dims = [Dim::Sym("N".into()), Dim::Unknown, Dim::Known(0), Dim::Known(7)];
    let m = load_model_bytes(&model(&dims, None), None).unwrap();
    assert_eq!(m.graph.inputs[0].shape.as_deref(), Some(&dims[..]));
    assert_eq!(m.graph.outputs[0].dtype, None);
    assert_eq!(m.graph.opset(), 17);
    assert_eq!(m.graph.nodes[0].name, "Relu_0");
    let e = err_of(load_model_bytes(&model(&[], Some(-2)), None));
    assert!(e.contains("graph input 'x' has invalid dimension -2 (axis 0)"), "{e}");
    let e = err_of(load_model_bytes(&model(&[], Some(1 << 50)), None));
    assert!(e.contains("invalid dimension"), "{e}");
    let many = vec![Dim::Known(1); 65];
    let e = err_of(load_model_bytes(&model(&many, None), None));
    assert!(e.contains("rank 65"), "{e}");
}

#[test]
fn generated_node_names_do_not_collide() {
    let m = proto::ModelProto {
        opset_import: vec![opset("", 17)],
        graph: Some(proto::GraphProto {
            node: vec![
                node_proto("Relu", "Relu_1", &["x"], &["a"]),
                node_proto("Relu", "", &["a"], &["b"]),
                node_proto("Relu", "", &["b"], &["c"]),
            ],
            input: vec![vi_proto("x", 1, None)],
            output: vec![vi_proto("c", 1, None)],
            ..Default::default()
        }),
        ..Default::default()
    };
    let g = load_model_bytes(&m.encode_to_vec(), None).unwrap().graph;
    let names: Vec<&str> = g.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["Relu_1", "Relu_1_1", "Relu_2"]);
}

#[test]
fn attributes_without_a_type_are_inferred() {
    let mut n = node_proto("Softmax", "sm", &["x"], &["y"]);
    n.attribute.push(AttributeProto { name: "axis".into(), i: Some(-1), ..Default::default() });
    n.attribute.push(AttributeProto { name: "perm".into(), ints: vec![1, 0], ..Default::default() });
    n.attribute.push(AttributeProto { name: "nothing".into(), r#type: 7, ..Default::default() });
    let m = proto::ModelProto {
        graph: Some(proto::GraphProto {
            node: vec![n.clone()],
            input: vec![vi_proto("x", 1, None)],
            output: vec![vi_proto("y", 1, None)],
            ..Default::default()
        }),
        ..Default::default()
    };
    let g = load_model_bytes(&m.encode_to_vec(), None).unwrap().graph;
    assert_eq!(g.nodes[0].attrs["axis"], Attr::Int(-1));
    assert_eq!(g.nodes[0].attrs["perm"], Attr::Ints(vec![1, 0]));
    assert_eq!(g.nodes[0].attrs["nothing"], Attr::Ints(vec![]));

    let mut bad = m.clone();
    bad.graph.as_mut().unwrap().node[0].attribute.push(AttributeProto { name: "empty".into(), ..Default::default() });
    let e = err_of(load_model_bytes(&bad.encode_to_vec(), None));
    assert!(e.contains("attribute 'empty' of node 'sm' (Softmax) has neither a type nor a value"), "{e}");

    let mut dup = m;
    dup.graph.as_mut().unwrap().node[0].attribute.push(AttributeProto {
        name: "axis".into(),
        i: Some(0),
        ..Default::default()
    });
    let e = err_of(load_model_bytes(&dup.encode_to_vec(), None));
    assert!(e.contains("given twice"), "{e}");
}

// ---------------------------------------------------------------------------
// External data.

fn write_model(dir: &Path, t: TensorProto) -> PathBuf {
    let p = dir.join("model.onnx");
    std::fs::write(&p, model_with_initializer(t)).unwrap();
    p
}

#[test]
fn external_data_inside_the_model_folder() {
    let dir = TempDir::new("ext-in");
    let mut data = vec![0u8; 8];
    data.extend(f32_bytes(&[1.0, 2.0, 3.0, 4.0]));
    std::fs::create_dir(dir.path().join("weights")).unwrap();
    std::fs::write(dir.path().join("weights/w.bin"), &data).unwrap();
    let p = write_model(dir.path(), external("w", &[2, 2], "weights/w.bin", Some(8), Some(16)));
    let m = load_model(&p).unwrap();
    let w = &m.graph.initializers["w"];
    assert_eq!(w.shape(), &[2, 2]);
    assert_eq!(w.to_f64_vec(), vec![1.0, 2.0, 3.0, 4.0]);
    assert!(w.is_mapped(), "external data is used in place");

    // "./" prefixes are fine; offset and length are optional.
    std::fs::write(dir.path().join("plain.bin"), f32_bytes(&[5.0, 6.0])).unwrap();
    let p = write_model(dir.path(), external("w", &[2], "./plain.bin", None, None));
    assert_eq!(load_model(&p).unwrap().graph.initializers["w"].to_f64_vec(), vec![5.0, 6.0]);

    // From memory: needs base_dir.
    let bytes = model_with_initializer(external("w", &[2], "plain.bin", None, None));
    let e = err_of(load_model_bytes(&bytes, None));
    assert!(e.contains("initializer 'w' is stored in external file 'plain.bin'"), "{e}");
    let m = load_model_bytes(&bytes, Some(dir.path())).unwrap();
    assert_eq!(m.graph.initializers["w"].to_f64_vec(), vec![5.0, 6.0]);

    // Bounds.
    let p = write_model(dir.path(), external("w", &[2], "plain.bin", Some(4), None));
    let e = err_of(load_model(&p));
    assert!(e.contains("external data range 4..12 lies outside 'plain.bin' (8 bytes)"), "{e}");
    let p = write_model(dir.path(), external("w", &[2], "plain.bin", Some(u64::MAX), None));
    assert!(err_of(load_model(&p)).contains("lies outside"));
    let p = write_model(dir.path(), external("w", &[2], "plain.bin", None, Some(4)));
    assert!(err_of(load_model(&p)).contains("length is 4 bytes"));
    let mut t = external("w", &[2], "plain.bin", None, None);
    t.external_data[0].value = "weights".into();
    let p = write_model(dir.path(), t);
    assert!(err_of(load_model(&p)).contains("is not a regular file"));
    let mut t = external("w", &[2], "plain.bin", None, None);
    t.external_data.push(proto::StringStringEntryProto { key: "offset".into(), value: "-4".into() });
    let p = write_model(dir.path(), t);
    assert!(err_of(load_model(&p)).contains("offset '-4' is not a number"));
}

#[test]
fn external_data_outside_the_model_folder_is_refused() {
    let outer = TempDir::new("ext-out");
    let model_dir = outer.path().join("model");
    std::fs::create_dir(&model_dir).unwrap();
    let secret = outer.path().join("secret.bin");
    std::fs::write(&secret, f32_bytes(&[9.0, 9.0])).unwrap();

    let p = write_model(&model_dir, external("w", &[2], "../secret.bin", None, None));
    assert!(err_of(load_model(&p)).contains("leaves the model folder"));
    let p = write_model(&model_dir, external("w", &[2], "sub/../../secret.bin", None, None));
    assert!(err_of(load_model(&p)).contains("leaves the model folder"));
    let p = write_model(&model_dir, external("w", &[2], secret.to_str().unwrap(), None, None));
    assert!(err_of(load_model(&p)).contains("is an absolute path"));
    let p = write_model(&model_dir, external("w", &[2], "", None, None));
    assert!(err_of(load_model(&p)).contains("is empty"));
    let mut t = external("w", &[2], "x", None, None);
    t.external_data.clear();
    let p = write_model(&model_dir, t);
    assert!(err_of(load_model(&p)).contains("has no location"));

    #[cfg(unix)]
    {
        // A symlink inside the folder that leads out of it...
        std::os::unix::fs::symlink(&secret, model_dir.join("link.bin")).unwrap();
        let p = write_model(&model_dir, external("w", &[2], "link.bin", None, None));
        let e = err_of(load_model(&p));
        assert!(e.contains("resolves outside the model folder"), "{e}");
        // ...and a folder symlink that does the same.
        std::os::unix::fs::symlink(outer.path(), model_dir.join("up")).unwrap();
        let p = write_model(&model_dir, external("w", &[2], "up/secret.bin", None, None));
        assert!(err_of(load_model(&p)).contains("resolves outside the model folder"));
        // A symlink that stays inside is fine.
        std::fs::write(model_dir.join("real.bin"), f32_bytes(&[1.0, 2.0])).unwrap();
        std::os::unix::fs::symlink(model_dir.join("real.bin"), model_dir.join("alias.bin")).unwrap();
        let p = write_model(&model_dir, external("w", &[2], "alias.bin", None, None));
        assert_eq!(load_model(&p).unwrap().graph.initializers["w"].to_f64_vec(), vec![1.0, 2.0]);
    }
}

// ---------------------------------------------------------------------------
// Model-local functions.

fn function(name: &str, inputs: &[&str], outputs: &[&str], nodes: Vec<NodeProto>) -> proto::FunctionProto {
    proto::FunctionProto {
        name: name.into(),
        domain: "fn".into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        node: nodes,
        opset_import: vec![opset("", 17)],
        ..Default::default()
    }
}

fn call(f: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto { domain: "fn".into(), ..node_proto(f, name, inputs, outputs) }
}

#[test]
fn nested_functions_are_inlined_with_unique_names() {
    // inner(a) = Relu(Neg(a)) with LeakyRelu alpha from @alpha (no default:
    // the attribute is dropped when the call does not give it).
    let mut leaky = node_proto("LeakyRelu", "act", &["n"], &["b"]);
    leaky.attribute.push(AttributeProto {
        name: "alpha".into(),
        ref_attr_name: "alpha".into(),
        r#type: 1,
        ..Default::default()
    });
    let inner = function("inner", &["a"], &["b"], vec![node_proto("Neg", "", &["a"], &["n"]), leaky]);
    // outer(a) = inner(inner(a)), passing its own @slope down as alpha.
    let mut c1 = call("inner", "first", &["a"], &["t"]);
    c1.attribute.push(AttributeProto {
        name: "alpha".into(),
        ref_attr_name: "slope".into(),
        r#type: 1,
        ..Default::default()
    });
    let c2 = call("inner", "second", &["t"], &["b"]);
    let outer = function("outer", &["a"], &["b"], vec![c1, c2]);
    let mut top = call("outer", "top", &["x"], &["y"]);
    top.attribute.push(AttributeProto { name: "slope".into(), f: Some(0.5), r#type: 1, ..Default::default() });
    let m = proto::ModelProto {
        opset_import: vec![opset("", 17), opset("fn", 1)],
        functions: vec![inner, outer],
        graph: Some(proto::GraphProto {
            node: vec![top, call("inner", "", &["y"], &["z"])],
            input: vec![vi_proto("x", 1, None)],
            output: vec![vi_proto("z", 1, None)],
            ..Default::default()
        }),
        ..Default::default()
    };
    let g = load_model_bytes(&m.encode_to_vec(), None).unwrap().graph;
    let names: Vec<&str> = g.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        names,
        ["top/first/Neg_0", "top/first/act", "top/second/Neg_0", "top/second/act", "inner_1/Neg_0", "inner_1/act"]
    );
    let alphas: Vec<Option<f32>> =
        g.nodes.iter().filter(|n| n.op_type == "LeakyRelu").map(|n| n.attr_float("alpha").unwrap()).collect();
    assert_eq!(alphas, [Some(0.5), None, None]);
    // Wiring: x -> ... -> y -> ... -> z, internals renamed uniquely.
    assert_eq!(g.nodes[0].inputs, ["x"]);
    assert_eq!(g.nodes[3].outputs, ["y"]);
    assert_eq!(g.nodes[4].inputs, ["y"]);
    assert_eq!(g.nodes[5].outputs, ["z"]);
    assert_eq!(g.nodes[1].inputs, g.nodes[0].outputs);
    assert_ne!(g.nodes[0].outputs, g.nodes[2].outputs);
    assert_eq!(g.nodes[2].inputs, g.nodes[1].outputs);
    assert!(g.nodes.iter().all(|n| n.domain.is_empty()));
}

#[test]
fn function_call_arity_is_checked() {
    let f = function("f", &["a"], &["b"], vec![node_proto("Relu", "", &["a"], &["b"])]);
    let m = proto::ModelProto {
        functions: vec![f.clone(), f],
        graph: Some(proto::GraphProto {
            node: vec![call("f", "c", &["x", "x"], &["y"])],
            input: vec![vi_proto("x", 1, None)],
            output: vec![vi_proto("y", 1, None)],
            ..Default::default()
        }),
        ..Default::default()
    };
    assert!(err_of(load_model_bytes(&m.encode_to_vec(), None)).contains("defined twice"));
    let mut m = m;
    m.functions.pop();
    let e = err_of(load_model_bytes(&m.encode_to_vec(), None));
    assert!(
        e.contains("node 'c' (call of function 'f') has 2 inputs and 1 outputs; the function takes 1 and 1"),
        "{e}"
    );
}

#[test]
fn decode_budget_rejects_many_tiny_messages_but_not_real_graphs() {
    // 300 named nodes with attributes load fine...
    let mut nodes = Vec::new();
    for i in 0..300 {
        let mut n =
            node_proto("Transpose", &format!("/layers.{i}/Transpose"), &[&format!("v{i}")], &[&format!("v{}", i + 1)]);
        n.attribute.push(AttributeProto { name: "perm".into(), ints: vec![1, 0], r#type: 7, ..Default::default() });
        nodes.push(n);
    }
    let m = proto::ModelProto {
        graph: Some(proto::GraphProto {
            node: nodes,
            input: vec![vi_proto("v0", 1, None)],
            output: vec![vi_proto("v300", 1, None)],
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(load_model_bytes(&m.encode_to_vec(), None).unwrap().graph.nodes.len(), 300);
    // ...while a graph of 50000 empty value infos (2 bytes each) does not.
    let g = proto::GraphProto { input: vec![proto::ValueInfoProto::default(); 50_000], ..Default::default() };
    let bytes = proto::ModelProto { graph: Some(g), ..Default::default() }.encode_to_vec();
    assert!(err_of(load_model_bytes(&bytes, None)).contains("too many tiny messages"));
}

// ---------------------------------------------------------------------------
// Robustness: corrupted copies of valid models fail cleanly, never panic.

#[test]
fn mutated_models_never_panic() {
    let good = [std::fs::read(fixture("python_features.onnx")).unwrap(), model_to_bytes(&sample_graph()).unwrap()];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for bytes in &good {
        for cut in 0..bytes.len() {
            let _ = load_model_bytes(&bytes[..cut], None);
        }
        for _ in 0..3000 {
            let mut b = bytes.clone();
            for _ in 0..1 + next() % 4 {
                let i = (next() % b.len() as u64) as usize;
                b[i] = match next() % 4 {
                    0 => 0xff,
                    1 => 0,
                    2 => b[i] ^ (1 << (next() % 8)),
                    _ => next() as u8,
                };
            }
            let _ = load_model_bytes(&b, None);
        }
    }
}
