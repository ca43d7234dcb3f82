//! Phone numbers.
