//! The classifier's photo intake, model thread, routes and training, as a library: the binary
//! (`main.rs`) puts them together, and the fuzz targets drive the photo intake directly.

pub mod error;
pub mod intake;
pub mod model;
pub mod open_inference;
pub mod routes;
pub mod training;
