//! Reductions and operators along an axis.
//!
//! * [`reducers`] — ReduceSum/Mean/Max/Min/Prod/L1/L2/LogSum/LogSumExp/SumSquare
//!   (axes as attribute or input depending on the opset, keepdims,
//!   noop_with_empty_axes, ONNX values for empty sets).
//! * [`arg`] — ArgMax, ArgMin.
//! * [`softmax`] — Softmax, LogSoftmax, Hardmax (2-D coercion before opset 13).
//! * [`cumsum`] — CumSum.
//! * [`topk`] — TopK.

pub(crate) mod arg;
pub(crate) mod cumsum;
pub(crate) mod reducers;
pub(crate) mod softmax;
pub(crate) mod topk;

#[cfg(test)]
mod tests;

use crate::cpu::registry::OpRegistry;

pub fn register(r: &mut OpRegistry) {
    reducers::register(r);
    arg::register(r);
    softmax::register(r);
    cumsum::register(r);
    topk::register(r);
}
