//! ONNX → Core ML. Turns Tessera's graph IR into a Core ML ML Program
//! package (`.mlpackage`) on any OS, applies the Neural Engine's rules and
//! weight compression, and interprets the packages it writes on Tessera's
//! CPU kernels so that conversion mistakes show up here, not on a Mac.
//!
//! Layers: [`spec`] (protobuf messages, hand-written from the field numbers)
//! → [`blob`] (`weight.bin`) → [`mil`] (building a function) → [`prepare`] +
//! [`convert`] (IR → MIL) → [`package`] (the `.mlpackage`), with
//! [`state`] (KV caches as Core ML state), [`quantize`], [`rules`] (what the Neural Engine takes) and [`interp`]
//! (running a package).

pub mod blob;
pub mod convert;
pub mod interp;
pub mod mil;
pub mod package;
pub mod prepare;
pub mod quantize;
pub mod rules;
pub mod spec;
pub mod state;

pub use convert::Compute;
pub use package::{convert_graph, read_package, write_package, ConvertOptions, ConvertReport, Package, Target};
pub use quantize::WeightCompression;
