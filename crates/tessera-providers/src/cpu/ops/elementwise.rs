//! Elementwise operators.
//!
//! * [`unary`] — math functions and activations (Exp, Tanh, Gelu, ...),
//!   rounding, predicates (IsNaN, IsInf), Not, BitwiseNot, Clip.
//! * [`binary`] — numpy-broadcasting arithmetic, Pow, Mod, comparisons,
//!   logic, bitwise ops and shifts, PRelu, the variadic Max/Min/Sum/Mean,
//!   and Where.
//! * [`cast`] — Cast and CastLike.
//! * [`broadcast`] — the broadcasting engine (collapsed dimensions, inner
//!   runs specialized on stride 0/1, rayon for large outputs).
//! * [`scalar`] — element traits and dtype dispatch, shared with `reduce`.

pub(crate) mod binary;
pub(crate) mod broadcast;
pub(crate) mod cast;
pub(crate) mod scalar;
pub(crate) mod unary;

#[cfg(test)]
mod conformance_tests;
#[cfg(test)]
pub(crate) mod tests;

use crate::cpu::registry::OpRegistry;

pub fn register(r: &mut OpRegistry) {
    unary::register(r);
    binary::register(r);
    cast::register(r);
}
