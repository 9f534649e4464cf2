//! A schema-aware walk over the protobuf wire format that runs *before*
//! decoding: it checks that every length prefix fits in its parent, that
//! nesting is bounded, and estimates how much heap the decoded messages will
//! take, so that a small hostile file (say, a million empty `NodeProto`s of
//! two bytes each, each becoming a few hundred bytes of structs) is rejected
//! before anything is allocated. It allocates nothing itself.

use std::mem::size_of;

use tessera_core::{Error, Result};

use crate::proto;

/// Deepest message nesting accepted (prost's own limit is 100).
pub const MAX_NESTING: usize = 64;

/// Message types of `onnx.proto` that we decode.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    Model,
    Graph,
    Node,
    Attribute,
    Tensor,
    Segment,
    SparseTensor,
    ValueInfo,
    Type,
    TypeTensor,
    TypeSequence,
    TypeMap,
    TypeOptional,
    TypeSparseTensor,
    TypeOpaque,
    Shape,
    Dimension,
    OpsetId,
    Function,
    StringEntry,
}

/// How a field is held once decoded.
#[derive(Copy, Clone, Debug)]
enum Card {
    /// Stored inline in its parent (no heap of its own).
    Inline,
    /// `Option<Box<T>>`.
    Boxed,
    /// `Vec<T>`.
    Repeated,
}

#[derive(Copy, Clone, Debug)]
enum Num {
    Varint,
    Fixed32,
    Fixed64,
}

#[derive(Copy, Clone, Debug)]
enum Field {
    Message(Msg, Card),
    /// `String` or `Vec<u8>`, single or repeated.
    Str(Card),
    /// `Bytes` sliced from the input (no copy).
    ZeroCopy,
    /// A singular scalar: no heap.
    Scalar,
    /// A repeated number (packed or not), `mem` bytes per element once decoded.
    Numbers(Num, usize),
    /// Not decoded: skipped.
    Unknown,
}

impl Msg {
    fn name(self) -> &'static str {
        match self {
            Msg::Model => "ModelProto",
            Msg::Graph => "GraphProto",
            Msg::Node => "NodeProto",
            Msg::Attribute => "AttributeProto",
            Msg::Tensor => "TensorProto",
            Msg::Segment => "TensorProto.Segment",
            Msg::SparseTensor => "SparseTensorProto",
            Msg::ValueInfo => "ValueInfoProto",
            Msg::Type => "TypeProto",
            Msg::TypeTensor => "TypeProto.Tensor",
            Msg::TypeSequence => "TypeProto.Sequence",
            Msg::TypeMap => "TypeProto.Map",
            Msg::TypeOptional => "TypeProto.Optional",
            Msg::TypeSparseTensor => "TypeProto.SparseTensor",
            Msg::TypeOpaque => "TypeProto.Opaque",
            Msg::Shape => "TensorShapeProto",
            Msg::Dimension => "TensorShapeProto.Dimension",
            Msg::OpsetId => "OperatorSetIdProto",
            Msg::Function => "FunctionProto",
            Msg::StringEntry => "StringStringEntryProto",
        }
    }

    /// In-memory size of the decoded struct.
    fn size(self) -> usize {
        match self {
            Msg::Model => size_of::<proto::ModelProto>(),
            Msg::Graph => size_of::<proto::GraphProto>(),
            Msg::Node => size_of::<proto::NodeProto>(),
            Msg::Attribute => size_of::<proto::AttributeProto>(),
            Msg::Tensor => size_of::<proto::TensorProto>(),
            Msg::Segment => size_of::<proto::tensor_proto::Segment>(),
            Msg::SparseTensor => size_of::<proto::SparseTensorProto>(),
            Msg::ValueInfo => size_of::<proto::ValueInfoProto>(),
            Msg::Type => size_of::<proto::TypeProto>(),
            Msg::TypeTensor => size_of::<proto::type_proto::Tensor>(),
            Msg::TypeSequence => size_of::<proto::type_proto::Sequence>(),
            Msg::TypeMap => size_of::<proto::type_proto::Map>(),
            Msg::TypeOptional => size_of::<proto::type_proto::Optional>(),
            Msg::TypeSparseTensor => size_of::<proto::type_proto::SparseTensor>(),
            Msg::TypeOpaque => size_of::<proto::type_proto::Opaque>(),
            Msg::Shape => size_of::<proto::TensorShapeProto>(),
            Msg::Dimension => size_of::<proto::tensor_shape_proto::Dimension>(),
            Msg::OpsetId => size_of::<proto::OperatorSetIdProto>(),
            Msg::Function => size_of::<proto::FunctionProto>(),
            Msg::StringEntry => size_of::<proto::StringStringEntryProto>(),
        }
    }

    /// The field table; must agree with the `#[prost]` tags in `proto.rs`.
    fn field(self, tag: u64) -> Field {
        use Card::*;
        use Field::*;
        match (self, tag) {
            (Msg::Model, 1 | 5) => Scalar,
            (Msg::Model, 8) => Message(Msg::OpsetId, Repeated),
            (Msg::Model, 2 | 3 | 4 | 6) => Str(Inline),
            (Msg::Model, 7) => Message(Msg::Graph, Inline),
            (Msg::Model, 14) => Message(Msg::StringEntry, Repeated),
            (Msg::Model, 25) => Message(Msg::Function, Repeated),

            (Msg::StringEntry | Msg::TypeOpaque, 1 | 2) => Str(Inline),
            (Msg::OpsetId, 1) => Str(Inline),
            (Msg::OpsetId, 2) => Scalar,

            (Msg::Graph, 1) => Message(Msg::Node, Repeated),
            (Msg::Graph, 2 | 10) => Str(Inline),
            (Msg::Graph, 5) => Message(Msg::Tensor, Repeated),
            (Msg::Graph, 15) => Message(Msg::SparseTensor, Repeated),
            (Msg::Graph, 11..=13) => Message(Msg::ValueInfo, Repeated),

            (Msg::Node, 1 | 2) => Str(Repeated),
            (Msg::Node, 3 | 4 | 6 | 7 | 8) => Str(Inline),
            (Msg::Node, 5) => Message(Msg::Attribute, Repeated),

            (Msg::Attribute, 1 | 4 | 13 | 21) => Str(Inline),
            (Msg::Attribute, 2 | 3 | 20) => Scalar,
            (Msg::Attribute, 5) => Message(Msg::Tensor, Boxed),
            (Msg::Attribute, 6) => Message(Msg::Graph, Boxed),
            (Msg::Attribute, 22) => Message(Msg::SparseTensor, Boxed),
            (Msg::Attribute, 14) => Message(Msg::Type, Boxed),
            (Msg::Attribute, 7) => Numbers(Num::Fixed32, 4),
            (Msg::Attribute, 8) => Numbers(Num::Varint, 8),
            (Msg::Attribute, 9) => Str(Repeated),
            (Msg::Attribute, 10) => Message(Msg::Tensor, Repeated),
            (Msg::Attribute, 11) => Message(Msg::Graph, Repeated),
            (Msg::Attribute, 23) => Message(Msg::SparseTensor, Repeated),
            (Msg::Attribute, 15) => Message(Msg::Type, Repeated),

            (Msg::ValueInfo, 1 | 3) => Str(Inline),
            (Msg::ValueInfo, 2) => Message(Msg::Type, Inline),

            (Msg::Tensor, 1 | 7) => Numbers(Num::Varint, 8),
            (Msg::Tensor, 2 | 14) => Scalar,
            (Msg::Tensor, 3) => Message(Msg::Segment, Inline),
            (Msg::Tensor, 4) => Numbers(Num::Fixed32, 4),
            (Msg::Tensor, 5) => Numbers(Num::Varint, 4),
            (Msg::Tensor, 6) => Str(Repeated),
            (Msg::Tensor, 8 | 12) => Str(Inline),
            (Msg::Tensor, 9) => ZeroCopy,
            (Msg::Tensor, 13) => Message(Msg::StringEntry, Repeated),
            (Msg::Tensor, 10) => Numbers(Num::Fixed64, 8),
            (Msg::Tensor, 11) => Numbers(Num::Varint, 8),
            (Msg::Segment, 1 | 2) => Scalar,

            (Msg::SparseTensor, 1 | 2) => Message(Msg::Tensor, Inline),
            (Msg::SparseTensor, 3) => Numbers(Num::Varint, 8),

            (Msg::Shape, 1) => Message(Msg::Dimension, Repeated),
            (Msg::Dimension, 1) => Scalar,
            (Msg::Dimension, 2 | 3) => Str(Inline),

            (Msg::Type, 1) => Message(Msg::TypeTensor, Inline),
            (Msg::Type, 4) => Message(Msg::TypeSequence, Inline),
            (Msg::Type, 5) => Message(Msg::TypeMap, Inline),
            (Msg::Type, 9) => Message(Msg::TypeOptional, Inline),
            (Msg::Type, 8) => Message(Msg::TypeSparseTensor, Inline),
            (Msg::Type, 7) => Message(Msg::TypeOpaque, Inline),
            (Msg::Type, 6) => Str(Inline),
            (Msg::TypeTensor | Msg::TypeSparseTensor, 1) => Scalar,
            (Msg::TypeTensor | Msg::TypeSparseTensor, 2) => Message(Msg::Shape, Inline),
            (Msg::TypeSequence | Msg::TypeOptional, 1) => Message(Msg::Type, Boxed),
            (Msg::TypeMap, 1) => Scalar,
            (Msg::TypeMap, 2) => Message(Msg::Type, Boxed),

            (Msg::Function, 1 | 8 | 10 | 13) => Str(Inline),
            (Msg::Function, 4..=6) => Str(Repeated),
            (Msg::Function, 11) => Message(Msg::Attribute, Repeated),
            (Msg::Function, 7) => Message(Msg::Node, Repeated),
            (Msg::Function, 9) => Message(Msg::OpsetId, Repeated),
            (Msg::Function, 12) => Message(Msg::ValueInfo, Repeated),

            _ => Unknown,
        }
    }
}

/// Heap taken by a `String`/`Vec<u8>` header in a `Vec`.
const VEC_HEADER: u64 = 24;

fn corrupt(msg: Msg, what: impl std::fmt::Display) -> Error {
    Error::InvalidModel(format!("corrupt protobuf in {}: {what}", msg.name()))
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn varint(&mut self, msg: Msg) -> Result<u64> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = *self.buf.get(self.pos).ok_or_else(|| corrupt(msg, "truncated varint"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(corrupt(msg, "varint longer than 10 bytes"))
    }

    fn take(&mut self, n: u64, msg: Msg, tag: u64) -> Result<&[u8]> {
        let rest = self.buf.len() - self.pos;
        let n = usize::try_from(n).ok().filter(|&n| n <= rest).ok_or_else(|| {
            corrupt(msg, format!("field {tag} declares {n} bytes but only {rest} remain (truncated file?)"))
        })?;
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
}

/// Walks `buf` as a `root` message; returns the estimated heap (bytes) that
/// decoding it will allocate. Fails on malformed framing or deep nesting.
pub fn estimate(buf: &[u8], root: Msg) -> Result<u64> {
    Ok(root.size() as u64 + scan(buf, root, 0)?)
}

fn scan(buf: &[u8], msg: Msg, depth: usize) -> Result<u64> {
    if depth > MAX_NESTING {
        return Err(corrupt(msg, format!("messages nested deeper than {MAX_NESTING} levels")));
    }
    let mut r = Reader { buf, pos: 0 };
    let mut cost: u64 = 0;
    while r.pos < buf.len() {
        let key = r.varint(msg)?;
        let tag = key >> 3;
        let wire = key & 7;
        if tag == 0 || tag >= 1 << 29 {
            return Err(corrupt(msg, format!("invalid field number {tag}")));
        }
        let payload = match wire {
            0 => {
                r.varint(msg)?;
                None
            }
            1 => {
                r.take(8, msg, tag)?;
                None
            }
            5 => {
                r.take(4, msg, tag)?;
                None
            }
            2 => {
                let n = r.varint(msg)?;
                Some(r.take(n, msg, tag)?)
            }
            3 | 4 => return Err(corrupt(msg, format!("field {tag} uses protobuf groups, which ONNX never writes"))),
            _ => return Err(corrupt(msg, format!("field {tag} has invalid wire type {wire}"))),
        };
        let add = match (msg.field(tag), payload) {
            (Field::Message(m, card), Some(p)) => {
                let own = match card {
                    Card::Inline => 0,
                    Card::Boxed => m.size() as u64,
                    Card::Repeated => 2 * m.size() as u64,
                };
                own + scan(p, m, depth + 1)?
            }
            (Field::Str(Card::Repeated), Some(p)) => 2 * VEC_HEADER + p.len() as u64,
            (Field::Str(_), Some(p)) => p.len() as u64,
            (Field::Numbers(num, mem), Some(p)) => {
                let count = match num {
                    Num::Varint => p.iter().filter(|&&b| b & 0x80 == 0).count() as u64,
                    Num::Fixed32 => p.len() as u64 / 4,
                    Num::Fixed64 => p.len() as u64 / 8,
                };
                2 * count * mem as u64
            }
            (Field::Numbers(_, mem), None) => 2 * mem as u64,
            _ => 0,
        };
        cost = cost.saturating_add(add);
    }
    Ok(cost)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn truncated_and_nested_inputs_fail_cleanly() {
        let m = proto::ModelProto {
            graph: Some(proto::GraphProto { name: "g".repeat(100), ..Default::default() }),
            ..Default::default()
        };
        let bytes = m.encode_to_vec();
        assert!(estimate(&bytes, Msg::Model).is_ok());
        for cut in 1..bytes.len() {
            let e = estimate(&bytes[..cut], Msg::Model).unwrap_err().to_string();
            assert!(e.contains("corrupt protobuf"), "{e}");
        }
        // Sequence-of-sequence-of-... types nest without bound in the schema.
        let mut t = proto::TypeProto::default();
        for _ in 0..200 {
            t = proto::TypeProto {
                value: Some(proto::type_proto::Value::SequenceType(proto::type_proto::Sequence {
                    elem_type: Some(Box::new(t)),
                })),
                ..Default::default()
            };
        }
        let e = estimate(&t.encode_to_vec(), Msg::Type).unwrap_err().to_string();
        assert!(e.contains("nested deeper"), "{e}");
    }

    #[test]
    fn empty_messages_are_charged_their_struct_size() {
        let g = proto::GraphProto { node: vec![proto::NodeProto::default(); 1000], ..Default::default() };
        let bytes = g.encode_to_vec();
        assert_eq!(bytes.len(), 2000);
        let est = estimate(&bytes, Msg::Graph).unwrap();
        assert!(est >= 1000 * size_of::<proto::NodeProto>() as u64, "{est}");
    }
}
