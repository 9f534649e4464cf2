//! Neural-network operators: matrix products (MatMul, Gemm, Einsum),
//! convolutions, pooling, normalizations and attention. Shared helpers for the quant
//! and fused operators live in `common`.

pub(crate) mod attention;
pub(crate) mod common;
pub(crate) mod conv;
mod einsum;
pub(crate) mod matmul;
mod norm;
mod pool;
mod rotary;

#[cfg(test)]
mod conformance;
#[cfg(test)]
pub(crate) mod testutil;

pub(crate) use conv::conv_geom;

use crate::cpu::registry::OpRegistry;

pub fn register(r: &mut OpRegistry) {
    attention::register(r);
    rotary::register(r);
    matmul::register(r);
    einsum::register(r);
    conv::register(r);
    pool::register(r);
    norm::register(r);
}
