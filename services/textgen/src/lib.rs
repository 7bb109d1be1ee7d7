//! textgen's request types, model thread and routes, as a library: the binary (`main.rs`)
//! puts them together, and the fuzz targets drive the request parsing and validation directly.

pub mod completions;
pub mod embeddings;
pub mod error;
pub mod model;
pub mod rerank;
pub mod routes;
pub mod scheduler;
pub mod search;
pub mod tokenize;
