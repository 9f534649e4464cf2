//! CPU kernels over plain slices. Operators (shapes, attributes, dtypes)
//! live in `tessera-providers`; this crate only does arithmetic.

pub mod attention;
pub mod conv;
pub mod elementwise;
pub mod gemm;
pub mod pool;
pub mod quant;
pub mod weight_mem;
