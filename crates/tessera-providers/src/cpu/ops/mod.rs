//! Operator implementations, one module per family. Each module exposes
//! `register`, which adds its builders to the registry.

pub mod elementwise;
pub mod fused;
pub mod nn;
pub mod quant;
pub mod quant_contrib;
pub mod reduce;
pub mod shape;

use super::registry::OpRegistry;

pub fn register_all(r: &mut OpRegistry) {
    elementwise::register(r);
    reduce::register(r);
    shape::register(r);
    nn::register(r);
    quant::register(r);
    quant_contrib::register(r);
    fused::register(r);
}
