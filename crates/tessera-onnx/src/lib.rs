//! ONNX loading and writing.
