//! Execution providers. A provider is asked which nodes it can run
//! ([`ExecutionProvider::claim`]), then compiles each claimed subgraph
//! ([`ExecutionProvider::compile`]) into a [`CompiledPartition`] that owns
//! its memory. The session's partitioner assigns every node; the CPU provider
//! takes whatever no other provider claims.

pub mod accelerate;
pub mod amx;
pub mod coreml;
pub mod cpu;
pub mod precision;
pub mod profile;
pub mod provider;

pub use precision::Precision;
pub use provider::*;
