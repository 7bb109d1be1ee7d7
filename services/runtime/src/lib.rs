//! The FaaS service runtime shared by every service binary: configuration flags, init phases,
//! health, metrics, errors mapped to statuses, limits, API key, the model thread, and a server
//! that binds only after warm-up and drains on SIGTERM. It knows nothing of any model.

pub mod config;
pub mod error;
pub mod metrics;
pub mod phases;
pub mod server;
pub mod telemetry;
pub mod worker;

pub use config::{DTypeArg, DeviceArg, ServeArgs};
pub use error::ApiError;
pub use metrics::Metrics;
pub use phases::{InitPhases, Phase};
pub use server::{app, run, shutdown_signal, ModelCard, ServiceContext};
pub use worker::ModelWorker;

/// Exit code for bad configuration or unusable weights (after one clear line on stderr).
pub const EXIT_CONFIG: u8 = 2;

/// Reports a start-up failure as one line on stderr and one JSON log line, and gives the exit
/// code for it.
pub fn startup_failure(error: &dyn std::fmt::Display) -> std::process::ExitCode {
    tracing::error!(error = %error, "start-up failed");
    eprintln!("error: {error}");
    std::process::ExitCode::from(EXIT_CONFIG)
}
