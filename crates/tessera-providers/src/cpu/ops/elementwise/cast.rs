//! Cast and CastLike between every supported element type.
//!
//! Semantics follow C/numpy `astype`: float to integer truncates toward zero
//! (saturating at the integer range, NaN gives 0), integer to narrower
//! integer wraps, anything to bool is `x != 0` (NaN is true), bool reads as
//! 0/1, and float narrowing (f64 to f32/f16/bf16, f32 to f16/bf16) rounds
//! to nearest even with overflow to infinity. `saturate` only concerns
//! float8 types, which are not supported.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use tessera_core::{Attr, DType, Error, Node, Result, Tensor};

use super::scalar::{bad_dtype, map, with_all, with_numeric, Scalar};
use crate::cpu::registry::{BuildCtx, CpuOp, OpRegistry, RunCtx};
use crate::cpu::util::req;

pub(super) fn register(r: &mut OpRegistry) {
    r.add("Cast", build_cast);
    r.add("CastLike", build_cast_like);
}

/// Cast-1 names the target type with a string.
fn legacy_type_code(name: &[u8]) -> Option<i64> {
    let names: [(&[u8], i64); 14] = [
        (b"FLOAT", 1),
        (b"UINT8", 2),
        (b"INT8", 3),
        (b"UINT16", 4),
        (b"INT16", 5),
        (b"INT32", 6),
        (b"INT64", 7),
        (b"STRING", 8),
        (b"BOOL", 9),
        (b"FLOAT16", 10),
        (b"DOUBLE", 11),
        (b"UINT32", 12),
        (b"UINT64", 13),
        (b"BFLOAT16", 16),
    ];
    names.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|&(_, c)| c)
}

fn build_cast(node: &Node, _ctx: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let to = match node.attrs.get("to") {
        Some(Attr::String(s)) => legacy_type_code(s).ok_or_else(|| {
            Error::node(node, format!("unknown type name '{}' in attribute 'to'", String::from_utf8_lossy(s)))
        })?,
        _ => node.attr_int("to")?.ok_or_else(|| Error::node(node, "missing attribute 'to'"))?,
    };
    let to = i32::try_from(to)
        .map_err(|_| Error::node(node, format!("unknown data type {to}")))
        .and_then(|c| DType::from_onnx(c).map_err(|e| Error::node(node, format!("cannot cast to {e}"))))?;
    let node = node.clone();
    Ok(Box::new(move |inputs: &[Option<&Tensor>], rc: &mut RunCtx| {
        let x = req(&node, inputs, 0)?;
        Ok(vec![cast_tensor(&node, x, to, rc)?])
    }))
}

fn build_cast_like(node: &Node, _ctx: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    Ok(Box::new(move |inputs: &[Option<&Tensor>], rc: &mut RunCtx| {
        let x = req(&node, inputs, 0)?;
        let like = req(&node, inputs, 1)?;
        Ok(vec![cast_tensor(&node, x, like.dtype(), rc)?])
    }))
}

/// `x` converted to `to`.
pub(crate) fn cast_tensor(node: &Node, x: &Tensor, to: DType, ctx: &mut RunCtx) -> Result<Tensor> {
    let from = x.dtype();
    if from == to {
        return Ok(x.clone());
    }
    let mut out = ctx.alloc_for_overwrite(to, x.shape())?;
    match (from, to) {
        (DType::F32, DType::F16) => out.as_mut_slice::<f16>()?.convert_from_f32_slice(x.as_slice()?),
        (DType::F32, DType::BF16) => out.as_mut_slice::<bf16>()?.convert_from_f32_slice(x.as_slice()?),
        (DType::F16, DType::F32) => x.as_slice::<f16>()?.convert_to_f32_slice(out.as_mut_slice()?),
        (DType::BF16, DType::F32) => x.as_slice::<bf16>()?.convert_to_f32_slice(out.as_mut_slice()?),
        // Exact or round-to-nearest conversions, the same as the generic
        // path's, written directly so that they vectorize (the generic one
        // goes through a per-element enum). Integer results of
        // dequantization (MatMulInteger -> Cast) take the first.
        (DType::I32, DType::F32) => map(x.as_slice::<i32>()?, out.as_mut_slice::<f32>()?, |v| v as f32),
        (DType::U8, DType::F32) => map(x.as_slice::<u8>()?, out.as_mut_slice::<f32>()?, |v| v as f32),
        (DType::I8, DType::F32) => map(x.as_slice::<i8>()?, out.as_mut_slice::<f32>()?, |v| v as f32),
        (DType::I64, DType::F32) => map(x.as_slice::<i64>()?, out.as_mut_slice::<f32>()?, |v| v as f32),
        (DType::F32, DType::F64) => map(x.as_slice::<f32>()?, out.as_mut_slice::<f64>()?, |v| v as f64),
        (DType::F64, DType::F32) => map(x.as_slice::<f64>()?, out.as_mut_slice::<f32>()?, |v| v as f32),
        (_, DType::Bool) => {
            let o = out.as_mut_slice::<u8>()?;
            with_numeric!(from, S, { map(x.as_slice::<S>()?, o, |v| (!v.is_zero()) as u8) }, {
                return Err(bad_dtype(node, from));
            });
        }
        _ => {
            with_all!(
                from,
                S,
                {
                    let xs = x.as_slice::<S>()?;
                    with_numeric!(to, D, { map(xs, out.as_mut_slice::<D>()?, |v| v.cast::<D>()) }, {
                        return Err(bad_dtype(node, to));
                    });
                },
                return Err(bad_dtype(node, from))
            );
        }
    }
    Ok(out)
}
