//! Tessera's core layer: typed tensors, the graph IR, shape inference,
//! the memory planner and the optimizer passes. Nothing here knows about
//! ONNX files or about any particular execution provider.

pub mod dtype;
pub mod error;
pub mod graph;
pub mod passes;
pub mod plan;
pub mod shape_inference;
pub mod tensor;

pub use dtype::DType;
pub use error::{Error, Result};
pub use graph::{Attr, Dim, Graph, Node, ValueInfo};
pub use tensor::Tensor;

/// Hard limits applied to anything a model file declares, so that a hostile
/// file cannot make us allocate without bound.
pub mod limits {
    /// Largest number of elements in one tensor (2^34, 64 GiB of f32).
    pub const MAX_ELEMENTS: u64 = 1 << 34;
    /// Largest rank of any tensor.
    pub const MAX_RANK: usize = 64;
    /// Largest single dimension.
    pub const MAX_DIM: u64 = 1 << 34;
}
