//! Building one MIL function: typed values, `const` operations (small
//! values inline, large ones in the blob file) and operations whose every
//! parameter is bound by name, the form coremltools itself writes and Core
//! ML loads.

use std::collections::{BTreeMap, HashMap, HashSet};

use half::f16;
use tessera_core::{Error, Result};

use crate::blob::{BlobDType, BlobWriter};
use crate::spec::{self, binding, dimension, tensor_value, value, value_type, DataType};

/// Constants with more elements than this go to `weight.bin` (coremltools
/// uses the same threshold).
pub const MAX_IMMEDIATE: usize = 10;

/// Static type of a MIL tensor value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TType {
    pub dtype: DataType,
    pub shape: Vec<usize>,
}

impl TType {
    pub fn new(dtype: DataType, shape: &[usize]) -> TType {
        TType { dtype, shape: shape.to_vec() }
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn to_spec(&self) -> spec::ValueType {
        spec::ValueType {
            r#type: Some(value_type::Type::TensorType(spec::TensorType {
                data_type: self.dtype as i32,
                rank: self.shape.len() as i64,
                dimensions: self
                    .shape
                    .iter()
                    .map(|&d| spec::Dimension {
                        dimension: Some(dimension::Dimension::Constant(dimension::Constant { size: d as u64 })),
                    })
                    .collect(),
                attributes: BTreeMap::new(),
            })),
        }
    }
}

/// Numpy broadcasting of two shapes, or `None` when they do not broadcast.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let da = if i + a.len() >= r { a[i + a.len() - r] } else { 1 };
            let db = if i + b.len() >= r { b[i + b.len() - r] } else { 1 };
            match (da, db) {
                (x, y) if x == y => Some(x),
                (1, y) => Some(y),
                (x, 1) => Some(x),
                _ => None,
            }
        })
        .collect()
}

/// Data of a constant.
#[derive(Clone, Debug, PartialEq)]
pub enum ConstData {
    /// Stored as fp32 or fp16 per the constant's dtype.
    Float(Vec<f32>),
    I32(Vec<i32>),
    U32(Vec<u32>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    Bool(Vec<bool>),
    Str(String),
    /// Unsigned `bits`-wide values (1, 2, 3, 4, 6), one per element; stored
    /// packed in the blob file.
    Indices {
        bits: u8,
        values: Vec<u8>,
    },
}

/// MIL type of `bits`-wide unsigned indices.
pub fn index_dtype(bits: u8) -> Result<DataType> {
    Ok(match bits {
        1 => DataType::Uint1,
        2 => DataType::Uint2,
        3 => DataType::Uint3,
        4 => DataType::Uint4,
        6 => DataType::Uint6,
        8 => DataType::Uint8,
        b => return Err(Error::Unsupported(format!("{b}-bit indices have no MIL type"))),
    })
}

/// The name MIL accepts for a value: letters, digits and `_`, not starting
/// with a digit.
pub fn sanitize(name: &str) -> String {
    let mut s: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    let s_trim = s.trim_start_matches('_').to_string();
    if !s_trim.is_empty() {
        s = s_trim;
    }
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert_str(0, "v_");
    }
    s
}

fn str_value(s: &str) -> spec::Value {
    spec::Value {
        doc_string: String::new(),
        r#type: Some(TType::new(DataType::String, &[]).to_spec()),
        value: Some(value::Value::ImmediateValue(value::ImmediateValue {
            tensor: Some(spec::TensorValue {
                values: Some(tensor_value::Values::Strings(tensor_value::Strings { values: vec![s.to_string()] })),
            }),
        })),
    }
}

/// The text of a string immediate value (what [`str_value`] writes), as an
/// operation's `name` attribute holds it.
pub fn string_of(v: &spec::Value) -> Option<&str> {
    match v.value.as_ref()? {
        value::Value::ImmediateValue(iv) => match iv.tensor.as_ref()?.values.as_ref()? {
            tensor_value::Values::Strings(s) => s.values.first().map(|s| s.as_str()),
            _ => None,
        },
        _ => None,
    }
}

/// One function being built.
pub struct FnBuilder<'w> {
    pub inputs: Vec<(String, TType)>,
    /// State inputs (`state<tensor>`), with the tensor type they wrap.
    pub states: Vec<(String, TType)>,
    pub ops: Vec<spec::Operation>,
    pub types: HashMap<String, TType>,
    /// Values of the constants, for conversion rules that need them.
    pub consts: HashMap<String, ConstData>,
    blobs: &'w mut BlobWriter,
    names: HashSet<String>,
}

impl<'w> FnBuilder<'w> {
    pub fn new(blobs: &'w mut BlobWriter) -> FnBuilder<'w> {
        FnBuilder {
            inputs: Vec::new(),
            states: Vec::new(),
            ops: Vec::new(),
            types: HashMap::new(),
            consts: HashMap::new(),
            blobs,
            names: HashSet::new(),
        }
    }

    /// A fresh value name derived from `hint`.
    pub fn fresh(&mut self, hint: &str) -> String {
        let base = sanitize(hint);
        let mut name = base.clone();
        let mut i = 0;
        while self.names.contains(&name) {
            name = format!("{base}_{i}");
            i += 1;
        }
        self.names.insert(name.clone());
        name
    }

    pub fn ty(&self, name: &str) -> Result<&TType> {
        self.types.get(name).ok_or_else(|| Error::Other(format!("MIL value '{name}' has no type")))
    }

    pub fn add_input(&mut self, hint: &str, t: TType) -> String {
        let name = self.fresh(hint);
        self.types.insert(name.clone(), t.clone());
        self.inputs.push((name.clone(), t));
        name
    }

    /// A `const` operation. Float data is stored in `t.dtype` (fp16 or fp32).
    pub fn constant(&mut self, hint: &str, t: TType, data: ConstData) -> Result<String> {
        let n = t.numel();
        let len = match &data {
            ConstData::Float(v) => v.len(),
            ConstData::I32(v) => v.len(),
            ConstData::U32(v) => v.len(),
            ConstData::I8(v) => v.len(),
            ConstData::U8(v) => v.len(),
            ConstData::Bool(v) => v.len(),
            ConstData::Str(_) => 1,
            ConstData::Indices { values, .. } => values.len(),
        };
        // Packed sub-byte data is the only case where bytes != elements.
        if len != n && !matches!(data, ConstData::U8(_)) {
            return Err(Error::Other(format!("constant '{hint}': {len} values for shape {:?}", t.shape)));
        }
        // fp16 tops out at 65504: a model's "very negative" mask constant
        // (float32 min) would become -inf, and 0 * -inf is NaN.
        let data = match (data, t.dtype) {
            (ConstData::Float(v), DataType::Float16) => ConstData::Float(
                v.into_iter().map(|x| if x.is_finite() { x.clamp(-65504.0, 65504.0) } else { x }).collect(),
            ),
            (d, _) => d,
        };
        let name = self.fresh(hint);
        let sub_byte = matches!(data, ConstData::Indices { .. });
        let val = if (n > MAX_IMMEDIATE || sub_byte) && !matches!(data, ConstData::Bool(_) | ConstData::Str(_)) {
            let mut padding_bits = 0;
            let (bt, bytes): (BlobDType, Vec<u8>) = match (&data, t.dtype) {
                (ConstData::Indices { bits, values }, dt) if index_dtype(*bits)? == dt && *bits < 8 => {
                    padding_bits = ((8 - (values.len() * *bits as usize) % 8) % 8) as u64;
                    (BlobDType::UBits(*bits), crate::quantize::pack_bits(values, *bits))
                }
                (ConstData::Float(v), DataType::Float16) => {
                    (BlobDType::F16, v.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect())
                }
                (ConstData::Float(v), DataType::Float32) => (BlobDType::F32, bytemuck::cast_slice(v).to_vec()),
                (ConstData::I32(v), DataType::Int32) => (BlobDType::I32, bytemuck::cast_slice(v).to_vec()),
                (ConstData::U32(v), DataType::Uint32) => (BlobDType::U32, bytemuck::cast_slice(v).to_vec()),
                (ConstData::I8(v), DataType::Int8) => (BlobDType::I8, bytemuck::cast_slice(v).to_vec()),
                (ConstData::U8(v), DataType::Uint8) => (BlobDType::U8, v.clone()),
                (d, dt) => return Err(Error::Other(format!("constant '{hint}': cannot store {d:?} as {dt:?}"))),
            };
            let offset = self.blobs.add(bt, &bytes, padding_bits);
            value::Value::BlobFileValue(value::BlobFileValue {
                file_name: "@model_path/weights/weight.bin".into(),
                offset,
            })
        } else {
            let values = match (&data, t.dtype) {
                (ConstData::Float(v), DataType::Float32) => {
                    tensor_value::Values::Floats(tensor_value::Floats { values: v.clone() })
                }
                (ConstData::Float(v), DataType::Float16) => tensor_value::Values::Bytes(tensor_value::Bytes {
                    values: v.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect(),
                }),
                (ConstData::I32(v), DataType::Int32) => {
                    tensor_value::Values::Ints(tensor_value::Ints { values: v.clone() })
                }
                (ConstData::U32(v), DataType::Uint32) => {
                    tensor_value::Values::Bytes(tensor_value::Bytes { values: bytemuck::cast_slice(v).to_vec() })
                }
                (ConstData::I8(v), DataType::Int8) => {
                    tensor_value::Values::Bytes(tensor_value::Bytes { values: bytemuck::cast_slice(v).to_vec() })
                }
                (ConstData::U8(v), DataType::Uint8) => {
                    tensor_value::Values::Bytes(tensor_value::Bytes { values: v.clone() })
                }
                (ConstData::Bool(v), DataType::Bool) => {
                    tensor_value::Values::Bools(tensor_value::Bools { values: v.clone() })
                }
                (ConstData::Str(s), DataType::String) => {
                    tensor_value::Values::Strings(tensor_value::Strings { values: vec![s.clone()] })
                }
                (d, dt) => return Err(Error::Other(format!("constant '{hint}': cannot store {d:?} as {dt:?}"))),
            };
            value::Value::ImmediateValue(value::ImmediateValue {
                tensor: Some(spec::TensorValue { values: Some(values) }),
            })
        };
        let mut attributes = BTreeMap::new();
        attributes.insert("name".to_string(), str_value(&name));
        attributes.insert(
            "val".to_string(),
            spec::Value { doc_string: String::new(), r#type: Some(t.to_spec()), value: Some(val) },
        );
        self.ops.push(spec::Operation {
            r#type: "const".into(),
            inputs: BTreeMap::new(),
            outputs: vec![spec::NamedValueType { name: name.clone(), r#type: Some(t.to_spec()) }],
            blocks: vec![],
            attributes,
        });
        self.types.insert(name.clone(), t);
        self.consts.insert(name.clone(), data);
        Ok(name)
    }

    pub fn const_i32(&mut self, hint: &str, shape: &[usize], v: Vec<i32>) -> Result<String> {
        self.constant(hint, TType::new(DataType::Int32, shape), ConstData::I32(v))
    }
    pub fn const_ints(&mut self, hint: &str, v: &[i64]) -> Result<String> {
        let v = v
            .iter()
            .map(|&x| i32::try_from(x).map_err(|_| Error::Unsupported(format!("{hint}: {x} exceeds int32"))))
            .collect::<Result<Vec<i32>>>()?;
        self.const_i32(hint, &[v.len()], v)
    }
    pub fn const_int(&mut self, hint: &str, v: i64) -> Result<String> {
        let v = i32::try_from(v).map_err(|_| Error::Unsupported(format!("{hint}: {v} exceeds int32")))?;
        self.const_i32(hint, &[], vec![v])
    }
    pub fn const_bool(&mut self, hint: &str, v: bool) -> Result<String> {
        self.constant(hint, TType::new(DataType::Bool, &[]), ConstData::Bool(vec![v]))
    }
    pub fn const_str(&mut self, hint: &str, s: &str) -> Result<String> {
        self.constant(hint, TType::new(DataType::String, &[]), ConstData::Str(s.into()))
    }
    pub fn const_float(&mut self, hint: &str, dtype: DataType, shape: &[usize], v: Vec<f32>) -> Result<String> {
        self.constant(hint, TType::new(dtype, shape), ConstData::Float(v))
    }

    /// One operation; `inputs` bind parameter names to value names (a
    /// list for variadic parameters such as `concat.values`). Returns the
    /// output names.
    pub fn op(&mut self, ty: &str, hint: &str, inputs: &[(&str, &[&str])], outs: Vec<TType>) -> Result<Vec<String>> {
        let mut args = BTreeMap::new();
        for (k, vals) in inputs {
            for v in *vals {
                if !self.types.contains_key(*v) {
                    return Err(Error::Other(format!("{ty} '{hint}': input '{v}' is not defined")));
                }
            }
            args.insert(
                k.to_string(),
                spec::Argument {
                    arguments: vals
                        .iter()
                        .map(|v| spec::Binding { binding: Some(binding::Binding::Name(v.to_string())) })
                        .collect(),
                },
            );
        }
        let names: Vec<String> = (0..outs.len())
            .map(|i| self.fresh(&if i == 0 { hint.to_string() } else { format!("{hint}_{i}") }))
            .collect();
        let mut attributes = BTreeMap::new();
        // An operation without outputs (write_state) still has a name.
        let op_name = names.first().cloned().unwrap_or_else(|| self.fresh(hint));
        attributes.insert("name".to_string(), str_value(&op_name));
        self.ops.push(spec::Operation {
            r#type: ty.into(),
            inputs: args,
            outputs: names
                .iter()
                .zip(&outs)
                .map(|(n, t)| spec::NamedValueType { name: n.clone(), r#type: Some(t.to_spec()) })
                .collect(),
            blocks: vec![],
            attributes,
        });
        for (n, t) in names.iter().zip(outs) {
            self.types.insert(n.clone(), t);
        }
        Ok(names)
    }

    /// [`FnBuilder::op1`] with each parameter's values owned.
    pub fn op1_owned(&mut self, ty: &str, hint: &str, inputs: &[(&str, Vec<String>)], out: TType) -> Result<String> {
        let refs: Vec<Vec<&str>> = inputs.iter().map(|(_, v)| v.iter().map(|s| s.as_str()).collect()).collect();
        let args: Vec<(&str, &[&str])> = inputs.iter().zip(&refs).map(|((k, _), v)| (*k, v.as_slice())).collect();
        self.op1(ty, hint, &args, out)
    }

    /// Shorthand for a one-output operation.
    pub fn op1(&mut self, ty: &str, hint: &str, inputs: &[(&str, &[&str])], out: TType) -> Result<String> {
        Ok(self.op(ty, hint, inputs, vec![out])?.remove(0))
    }

    /// A state input holding a tensor of type `t` (read with `read_state`,
    /// written with `write_state`), under a name already reserved with
    /// [`FnBuilder::fresh`].
    pub fn add_state_named(&mut self, name: &str, t: TType) {
        self.types.insert(name.to_string(), t.clone());
        self.states.push((name.to_string(), t));
    }

    /// The finished function, returning `outputs`.
    pub fn finish(self, opset: &str, outputs: Vec<String>) -> spec::Function {
        let states = self.states.iter().map(|(n, t)| spec::NamedValueType {
            name: n.clone(),
            r#type: Some(spec::ValueType {
                r#type: Some(spec::value_type::Type::StateType(Box::new(spec::StateType {
                    wrapped_type: Some(t.to_spec()),
                }))),
            }),
        });
        let inputs: Vec<spec::NamedValueType> = self
            .inputs
            .iter()
            .map(|(n, t)| spec::NamedValueType { name: n.clone(), r#type: Some(t.to_spec()) })
            .chain(states)
            .collect();
        let block = spec::Block { inputs: vec![], outputs, operations: self.ops, attributes: BTreeMap::new() };
        let mut specs = BTreeMap::new();
        specs.insert(opset.to_string(), block);
        spec::Function { inputs, opset: opset.into(), block_specializations: specs, attributes: BTreeMap::new() }
    }
}
