//! The Core ML provider: converts the claimed subgraph into a Core ML model
//! with the `tessera-coreml` crate and runs it through Core ML (on the Apple
//! Neural Engine where Core ML places it).
//!
//! This file will be extended by the provider implementation; the raw Core ML
//! calls live in the macOS-only `ffi` module.

#[cfg(target_os = "macos")]
pub mod ffi;
