//! The CPU provider: a kernel per ONNX operator, run over host tensors.

pub mod ops;
pub mod provider;
pub mod registry;
pub mod util;

pub use provider::CpuProvider;
pub use registry::{BuildCtx, CpuOp, OpRegistry, RunCtx};
