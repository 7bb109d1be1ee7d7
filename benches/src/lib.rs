//! Measuring instruments shared by the benchmark binaries.

pub mod machine;
