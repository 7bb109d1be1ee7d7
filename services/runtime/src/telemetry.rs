//! Logs: one JSON object a line, filtered by `RUST_LOG`.

use tracing_subscriber::EnvFilter;

/// Where logs go and how much of them by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogMode {
    /// A service: stdout, `info` and up (FaaS platforms collect stdout).
    Service,
    /// A command-line tool whose stdout is its answer: stderr, silent unless `RUST_LOG` is set.
    Cli,
}

/// Installs the JSON logger; a second call is a no-op.
pub fn init(mode: LogMode) {
    let default = match mode {
        LogMode::Service => "info",
        LogMode::Cli => "off",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false);
    let _ = match mode {
        LogMode::Service => builder.with_writer(std::io::stdout).try_init(),
        LogMode::Cli => builder.with_writer(std::io::stderr).try_init(),
    };
}
