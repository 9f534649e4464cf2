//! Writing the Tessera IR back to ONNX, so that models can be built in code
//! (the CLI demo, test models) and saved.

use std::path::Path;

use prost::bytes::Bytes;
use prost::Message;
use tessera_core::{Attr, Dim, Error, Graph, Result, Tensor, ValueInfo};

use crate::proto::{self, tensor_shape_proto, type_proto, AttributeType};

/// ai.onnx opset written when the graph names none.
pub const DEFAULT_OPSET: i64 = 17;

/// Smallest IR version that can carry `ai.onnx` opset `opset` (never below 8).
pub fn ir_version_for_opset(opset: i64) -> i64 {
    match opset {
        i64::MIN..=18 => 8,
        19..=20 => 9,
        21..=22 => 10,
        23 => 11,
        24 => 12,
        25..=27 => 13,
        _ => 14,
    }
}

/// Serializes `graph` as an ONNX model.
pub fn model_to_bytes(graph: &Graph) -> Result<Vec<u8>> {
    Ok(graph_to_model(graph)?.encode_to_vec())
}

/// Writes `graph` to `path` as an ONNX model.
pub fn save_model(graph: &Graph, path: &Path) -> Result<()> {
    let bytes = model_to_bytes(graph)?;
    std::fs::write(path, bytes)
        .map_err(|e| Error::Io(std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))))
}

/// A `TensorProto` holding `t` as `raw_data`.
pub fn tensor_to_proto(name: &str, t: &Tensor) -> proto::TensorProto {
    proto::TensorProto {
        dims: t.shape().iter().map(|&d| d as i64).collect(),
        data_type: t.dtype().onnx_code(),
        name: name.to_string(),
        raw_data: Bytes::copy_from_slice(t.bytes()),
        ..Default::default()
    }
}

/// Serializes one tensor as a `TensorProto` (the format of the ONNX test
/// data `.pb` files; read back with [`crate::load_tensor_proto`]).
pub fn tensor_to_bytes(name: &str, t: &Tensor) -> Vec<u8> {
    tensor_to_proto(name, t).encode_to_vec()
}

/// Builds the `ModelProto` for `graph`.
pub fn graph_to_model(graph: &Graph) -> Result<proto::ModelProto> {
    let mut opsets: Vec<(String, i64)> = graph.opsets.iter().map(|(d, v)| (d.clone(), *v)).collect();
    if let Some(o) = opsets.iter_mut().find(|o| o.0 == "ai.onnx") {
        o.0.clear();
    }
    if !opsets.iter().any(|o| o.0.is_empty()) {
        opsets.push((String::new(), DEFAULT_OPSET));
    }
    opsets.sort();
    let onnx_opset = opsets.iter().find(|o| o.0.is_empty()).map_or(DEFAULT_OPSET, |o| o.1);

    let mut initializers: Vec<(&String, &Tensor)> = graph.initializers.iter().collect();
    initializers.sort_by(|a, b| a.0.cmp(b.0));
    let mut value_info: Vec<&ValueInfo> = graph.value_info.values().collect();
    value_info.sort_by(|a, b| a.name.cmp(&b.name));

    let nodes = graph.nodes.iter().map(node_to_proto).collect::<Result<Vec<_>>>()?;
    let g = proto::GraphProto {
        node: nodes,
        name: if graph.name.is_empty() { "tessera".into() } else { graph.name.clone() },
        initializer: initializers.into_iter().map(|(n, t)| tensor_to_proto(n, t)).collect(),
        input: graph.inputs.iter().map(value_info_to_proto).collect(),
        output: graph.outputs.iter().map(value_info_to_proto).collect(),
        value_info: value_info.into_iter().map(value_info_to_proto).collect(),
        ..Default::default()
    };
    Ok(proto::ModelProto {
        ir_version: ir_version_for_opset(onnx_opset),
        opset_import: opsets
            .into_iter()
            .map(|(domain, version)| proto::OperatorSetIdProto { domain, version })
            .collect(),
        producer_name: "tessera".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(g),
        ..Default::default()
    })
}

fn node_to_proto(n: &tessera_core::Node) -> Result<proto::NodeProto> {
    let attribute =
        n.attrs.iter().map(|(k, a)| attr_to_proto(k, a).map_err(|m| Error::node(n, m))).collect::<Result<Vec<_>>>()?;
    Ok(proto::NodeProto {
        input: n.inputs.clone(),
        output: n.outputs.clone(),
        name: n.name.clone(),
        op_type: n.op_type.clone(),
        domain: n.domain.clone(),
        attribute,
        ..Default::default()
    })
}

fn attr_to_proto(name: &str, a: &Attr) -> std::result::Result<proto::AttributeProto, String> {
    let mut p = proto::AttributeProto { name: name.to_string(), ..Default::default() };
    let ty = match a {
        Attr::Float(v) => {
            p.f = Some(*v);
            AttributeType::Float
        }
        Attr::Int(v) => {
            p.i = Some(*v);
            AttributeType::Int
        }
        Attr::String(v) => {
            p.s = Some(v.clone());
            AttributeType::String
        }
        Attr::Tensor(t) => {
            p.t = Some(Box::new(tensor_to_proto("", t)));
            AttributeType::Tensor
        }
        Attr::Floats(v) => {
            p.floats = v.clone();
            AttributeType::Floats
        }
        Attr::Ints(v) => {
            p.ints = v.clone();
            AttributeType::Ints
        }
        Attr::Strings(v) => {
            p.strings = v.clone();
            AttributeType::Strings
        }
        Attr::Graph => {
            return Err(format!("subgraph attribute '{name}' cannot be saved: the IR keeps no subgraph body"));
        }
    };
    p.r#type = ty as i32;
    Ok(p)
}

fn value_info_to_proto(v: &ValueInfo) -> proto::ValueInfoProto {
    use tensor_shape_proto::dimension::Value;
    let r#type = (v.dtype.is_some() || v.shape.is_some()).then(|| proto::TypeProto {
        value: Some(type_proto::Value::TensorType(type_proto::Tensor {
            elem_type: v.dtype.map_or(0, |d| d.onnx_code()),
            shape: v.shape.as_ref().map(|s| proto::TensorShapeProto {
                dim: s
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
    });
    proto::ValueInfoProto { name: v.name.clone(), r#type, ..Default::default() }
}
