//! Unit tests of the shape operators.
