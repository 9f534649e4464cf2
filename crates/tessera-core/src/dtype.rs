use crate::{Error, Result};

/// Element types. The discriminants are ONNX's `TensorProto.DataType`
/// numbers so conversion is a lookup, not a table to keep in sync.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F32 = 1,
    U8 = 2,
    I8 = 3,
    U16 = 4,
    I16 = 5,
    I32 = 6,
    I64 = 7,
    Bool = 9,
    F16 = 10,
    F64 = 11,
    U32 = 12,
    U64 = 13,
    BF16 = 16,
}

impl DType {
    pub fn from_onnx(code: i32) -> Result<DType> {
        Ok(match code {
            1 => DType::F32,
            2 => DType::U8,
            3 => DType::I8,
            4 => DType::U16,
            5 => DType::I16,
            6 => DType::I32,
            7 => DType::I64,
            9 => DType::Bool,
            10 => DType::F16,
            11 => DType::F64,
            12 => DType::U32,
            13 => DType::U64,
            16 => DType::BF16,
            8 => return Err(Error::Unsupported("string tensors".into())),
            14 | 15 => return Err(Error::Unsupported("complex tensors".into())),
            17..=26 => return Err(Error::Unsupported(format!("ONNX data type {code} (float8/int4/float4)"))),
            _ => return Err(Error::InvalidModel(format!("unknown ONNX data type {code}"))),
        })
    }

    pub fn onnx_code(self) -> i32 {
        self as i32
    }

    pub fn size(self) -> usize {
        match self {
            DType::U8 | DType::I8 | DType::Bool => 1,
            DType::U16 | DType::I16 | DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F64 | DType::I64 | DType::U64 => 8,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16 | DType::F64)
    }

    pub fn is_int(self) -> bool {
        matches!(
            self,
            DType::U8 | DType::I8 | DType::U16 | DType::I16 | DType::I32 | DType::I64 | DType::U32 | DType::U64
        )
    }

    pub fn is_signed(self) -> bool {
        matches!(self, DType::I8 | DType::I16 | DType::I32 | DType::I64) || self.is_float()
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::U8 => "u8",
            DType::I8 => "i8",
            DType::U16 => "u16",
            DType::I16 => "i16",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::Bool => "bool",
            DType::F16 => "f16",
            DType::F64 => "f64",
            DType::U32 => "u32",
            DType::U64 => "u64",
            DType::BF16 => "bf16",
        }
    }

    /// numpy `descr` string used by .npy files (little endian).
    pub fn npy_descr(self) -> &'static str {
        match self {
            DType::F32 => "<f4",
            DType::U8 => "|u1",
            DType::I8 => "|i1",
            DType::U16 => "<u2",
            DType::I16 => "<i2",
            DType::I32 => "<i4",
            DType::I64 => "<i8",
            DType::Bool => "|b1",
            DType::F16 => "<f2",
            DType::F64 => "<f8",
            DType::U32 => "<u4",
            DType::U64 => "<u8",
            // numpy has no bfloat16; stored as raw u16 bits.
            DType::BF16 => "<u2",
        }
    }

    pub fn from_npy_descr(d: &str) -> Option<DType> {
        let d = d.replace('=', "<");
        Some(match d.as_str() {
            "<f4" => DType::F32,
            "|u1" | "<u1" => DType::U8,
            "|i1" | "<i1" => DType::I8,
            "<u2" => DType::U16,
            "<i2" => DType::I16,
            "<i4" => DType::I32,
            "<i8" => DType::I64,
            "|b1" | "<b1" => DType::Bool,
            "<f2" => DType::F16,
            "<f8" => DType::F64,
            "<u4" => DType::U32,
            "<u8" => DType::U64,
            _ => return None,
        })
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Maps a Rust element type to its `DType`.
pub trait Element: bytemuck::Pod + Send + Sync + 'static {
    const DTYPE: DType;
}

macro_rules! element {
    ($t:ty, $d:ident) => {
        impl Element for $t {
            const DTYPE: DType = DType::$d;
        }
    };
}
element!(f32, F32);
element!(f64, F64);
element!(u8, U8);
element!(i8, I8);
element!(u16, U16);
element!(i16, I16);
element!(i32, I32);
element!(i64, I64);
element!(u32, U32);
element!(u64, U64);
element!(half::f16, F16);
element!(half::bf16, BF16);
