//! Tessera's session layer: load a model, optimize it, split it between
//! execution providers, plan its memory and run it.

pub mod demo;
pub mod npy;
pub mod partition;
pub mod session;

pub use session::{NodeAssignment, Session, SessionOptions};
pub use tessera_core::{DType, Error, Result, Tensor};
pub use tessera_providers::Precision;
