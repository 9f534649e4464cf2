//! Hand-written protobuf messages for the subset of Core ML's `Model.proto`,
//! `FeatureTypes.proto` and `MIL.proto` that an ML Program needs. Field
//! numbers are those of the `.proto` files shipped with coremltools 9.0
//! (read from its generated descriptors); messages and fields we never
//! write or read are left out and skipped by the decoder.

#![allow(clippy::derive_partial_eq_without_eq)]

use std::collections::BTreeMap;

// ------------------------------------------------------------ Model.proto --

#[derive(Clone, PartialEq, prost::Message)]
pub struct Model {
    #[prost(int32, tag = "1")]
    pub specification_version: i32,
    #[prost(message, optional, tag = "2")]
    pub description: Option<ModelDescription>,
    #[prost(bool, tag = "10")]
    pub is_updatable: bool,
    #[prost(message, optional, tag = "502")]
    pub ml_program: Option<Program>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelDescription {
    #[prost(message, repeated, tag = "1")]
    pub input: Vec<FeatureDescription>,
    #[prost(message, repeated, tag = "10")]
    pub output: Vec<FeatureDescription>,
    #[prost(message, repeated, tag = "13")]
    pub state: Vec<FeatureDescription>,
    #[prost(message, optional, tag = "100")]
    pub metadata: Option<Metadata>,
    #[prost(message, repeated, tag = "20")]
    pub functions: Vec<FunctionDescription>,
    #[prost(string, tag = "21")]
    pub default_function_name: String,
}

/// One function of a multifunction model (spec 9 / iOS 18).
#[derive(Clone, PartialEq, prost::Message)]
pub struct FunctionDescription {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, repeated, tag = "2")]
    pub input: Vec<FeatureDescription>,
    #[prost(message, repeated, tag = "3")]
    pub output: Vec<FeatureDescription>,
    #[prost(message, repeated, tag = "6")]
    pub state: Vec<FeatureDescription>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Metadata {
    #[prost(string, tag = "1")]
    pub short_description: String,
    #[prost(string, tag = "2")]
    pub version_string: String,
    #[prost(string, tag = "3")]
    pub author: String,
    #[prost(string, tag = "4")]
    pub license: String,
    #[prost(btree_map = "string, string", tag = "100")]
    pub user_defined: BTreeMap<String, String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct FeatureDescription {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub short_description: String,
    #[prost(message, optional, tag = "3")]
    pub r#type: Option<FeatureType>,
}

// ----------------------------------------------------- FeatureTypes.proto --

#[derive(Clone, PartialEq, prost::Message)]
pub struct FeatureType {
    #[prost(oneof = "feature_type::Type", tags = "5, 8")]
    pub r#type: Option<feature_type::Type>,
    #[prost(bool, tag = "1000")]
    pub is_optional: bool,
}

pub mod feature_type {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Type {
        #[prost(message, tag = "5")]
        MultiArrayType(super::ArrayFeatureType),
        #[prost(message, tag = "8")]
        StateType(super::StateFeatureType),
    }
}

/// `ArrayFeatureType.ArrayDataType` values.
pub mod array_data_type {
    pub const FLOAT32: i32 = 65568;
    pub const DOUBLE: i32 = 65600;
    pub const INT32: i32 = 131104;
    pub const INT8: i32 = 131080;
    pub const FLOAT16: i32 = 65552;
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ArrayFeatureType {
    #[prost(int64, repeated, tag = "1")]
    pub shape: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(oneof = "array_feature_type::ShapeFlexibility", tags = "21, 31")]
    pub shape_flexibility: Option<array_feature_type::ShapeFlexibility>,
}

pub mod array_feature_type {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Shape {
        #[prost(int64, repeated, tag = "1")]
        pub shape: Vec<i64>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EnumeratedShapes {
        #[prost(message, repeated, tag = "1")]
        pub shapes: Vec<Shape>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ShapeRange {
        #[prost(message, repeated, tag = "1")]
        pub size_ranges: Vec<super::SizeRange>,
    }
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum ShapeFlexibility {
        #[prost(message, tag = "21")]
        EnumeratedShapes(EnumeratedShapes),
        #[prost(message, tag = "31")]
        ShapeRange(ShapeRange),
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SizeRange {
    #[prost(uint64, tag = "1")]
    pub lower_bound: u64,
    /// -1: unbounded.
    #[prost(int64, tag = "2")]
    pub upper_bound: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StateFeatureType {
    #[prost(message, optional, tag = "1")]
    pub array_type: Option<ArrayFeatureType>,
}

// -------------------------------------------------------------- MIL.proto --

/// `MILSpec.DataType` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, prost::Enumeration)]
#[repr(i32)]
pub enum DataType {
    UnusedType = 0,
    Bool = 1,
    String = 2,
    Float16 = 10,
    Float32 = 11,
    Float64 = 12,
    Bfloat16 = 13,
    Int8 = 21,
    Int16 = 22,
    Int32 = 23,
    Int64 = 24,
    Int4 = 25,
    Uint8 = 31,
    Uint16 = 32,
    Uint32 = 33,
    Uint64 = 34,
    Uint4 = 35,
    Uint2 = 36,
    Uint1 = 37,
    Uint6 = 38,
    Uint3 = 39,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Program {
    #[prost(int64, tag = "1")]
    pub version: i64,
    #[prost(btree_map = "string, message", tag = "2")]
    pub functions: BTreeMap<String, Function>,
    #[prost(string, tag = "3")]
    pub doc_string: String,
    #[prost(btree_map = "string, message", tag = "4")]
    pub attributes: BTreeMap<String, Value>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Function {
    #[prost(message, repeated, tag = "1")]
    pub inputs: Vec<NamedValueType>,
    #[prost(string, tag = "2")]
    pub opset: String,
    #[prost(btree_map = "string, message", tag = "3")]
    pub block_specializations: BTreeMap<String, Block>,
    #[prost(btree_map = "string, message", tag = "4")]
    pub attributes: BTreeMap<String, Value>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Block {
    #[prost(message, repeated, tag = "1")]
    pub inputs: Vec<NamedValueType>,
    #[prost(string, repeated, tag = "2")]
    pub outputs: Vec<String>,
    #[prost(message, repeated, tag = "3")]
    pub operations: Vec<Operation>,
    #[prost(btree_map = "string, message", tag = "4")]
    pub attributes: BTreeMap<String, Value>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Argument {
    #[prost(message, repeated, tag = "1")]
    pub arguments: Vec<Binding>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Binding {
    #[prost(oneof = "binding::Binding", tags = "1, 2")]
    pub binding: Option<binding::Binding>,
}

pub mod binding {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Binding {
        #[prost(string, tag = "1")]
        Name(String),
        #[prost(message, tag = "2")]
        Value(super::Value),
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Operation {
    #[prost(string, tag = "1")]
    pub r#type: String,
    #[prost(btree_map = "string, message", tag = "2")]
    pub inputs: BTreeMap<String, Argument>,
    #[prost(message, repeated, tag = "3")]
    pub outputs: Vec<NamedValueType>,
    #[prost(message, repeated, tag = "4")]
    pub blocks: Vec<Block>,
    #[prost(btree_map = "string, message", tag = "5")]
    pub attributes: BTreeMap<String, Value>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NamedValueType {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<ValueType>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueType {
    #[prost(oneof = "value_type::Type", tags = "1, 5")]
    pub r#type: Option<value_type::Type>,
}

pub mod value_type {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Type {
        #[prost(message, tag = "1")]
        TensorType(super::TensorType),
        #[prost(message, tag = "5")]
        StateType(Box<super::StateType>),
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StateType {
    #[prost(message, optional, tag = "1")]
    pub wrapped_type: Option<ValueType>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorType {
    #[prost(enumeration = "DataType", tag = "1")]
    pub data_type: i32,
    #[prost(int64, tag = "2")]
    pub rank: i64,
    #[prost(message, repeated, tag = "3")]
    pub dimensions: Vec<Dimension>,
    #[prost(btree_map = "string, message", tag = "4")]
    pub attributes: BTreeMap<String, Value>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Dimension {
    #[prost(oneof = "dimension::Dimension", tags = "1, 2")]
    pub dimension: Option<dimension::Dimension>,
}

pub mod dimension {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Constant {
        #[prost(uint64, tag = "1")]
        pub size: u64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Unknown {
        #[prost(bool, tag = "1")]
        pub variadic: bool,
    }
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Dimension {
        #[prost(message, tag = "1")]
        Constant(Constant),
        #[prost(message, tag = "2")]
        Unknown(Unknown),
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Value {
    #[prost(string, tag = "1")]
    pub doc_string: String,
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<ValueType>,
    #[prost(oneof = "value::Value", tags = "3, 5")]
    pub value: Option<value::Value>,
}

pub mod value {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ImmediateValue {
        #[prost(message, optional, tag = "1")]
        pub tensor: Option<super::TensorValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct BlobFileValue {
        #[prost(string, tag = "1")]
        pub file_name: String,
        #[prost(uint64, tag = "2")]
        pub offset: u64,
    }
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        #[prost(message, tag = "3")]
        ImmediateValue(ImmediateValue),
        #[prost(message, tag = "5")]
        BlobFileValue(BlobFileValue),
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorValue {
    #[prost(oneof = "tensor_value::Values", tags = "1, 2, 3, 4, 5, 6, 7")]
    pub values: Option<tensor_value::Values>,
}

pub mod tensor_value {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Floats {
        #[prost(float, repeated, tag = "1")]
        pub values: Vec<f32>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Ints {
        #[prost(int32, repeated, tag = "1")]
        pub values: Vec<i32>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Bools {
        #[prost(bool, repeated, tag = "1")]
        pub values: Vec<bool>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Strings {
        #[prost(string, repeated, tag = "1")]
        pub values: Vec<String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LongInts {
        #[prost(int64, repeated, tag = "1")]
        pub values: Vec<i64>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Doubles {
        #[prost(double, repeated, tag = "1")]
        pub values: Vec<f64>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Bytes {
        #[prost(bytes = "vec", tag = "1")]
        pub values: Vec<u8>,
    }
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Values {
        #[prost(message, tag = "1")]
        Floats(Floats),
        #[prost(message, tag = "2")]
        Ints(Ints),
        #[prost(message, tag = "3")]
        Bools(Bools),
        #[prost(message, tag = "4")]
        Strings(Strings),
        #[prost(message, tag = "5")]
        LongInts(LongInts),
        #[prost(message, tag = "6")]
        Doubles(Doubles),
        #[prost(message, tag = "7")]
        Bytes(Bytes),
    }
}
