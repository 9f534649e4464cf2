//! The CPU provider: a kernel per ONNX operator, run over host tensors.

pub mod ops;
pub mod registry;
pub mod util;

pub use registry::{BuildCtx, CpuOp, OpRegistry, RunCtx};
