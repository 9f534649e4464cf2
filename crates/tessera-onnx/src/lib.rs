//! ONNX loading and writing: hand-written protobuf messages ([`proto`]), the
//! loader that turns untrusted `.onnx` files into the Tessera IR ([`load`])
//! and the writer that turns the IR back into ONNX ([`save`]).
//!
//! The only `unsafe` in this crate is the memory-map call in `load.rs`.

#![deny(unsafe_code)]

pub mod load;
pub mod proto;
pub mod save;
mod wire;

pub use load::{load_model, load_model_bytes, load_tensor_proto, Model};
pub use save::{model_to_bytes, save_model, tensor_to_bytes};
