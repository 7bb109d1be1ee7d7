//! The FaaS service runtime shared by every service binary: configuration flags, init phases,
//! health, metrics, errors mapped to statuses, limits, API key, the model thread, and a server
//! that binds only after warm-up and drains on SIGTERM. It knows nothing of any model.

pub mod body;
pub mod config;
pub mod connections;
pub mod error;
pub mod lambda;
pub mod metrics;
pub mod open_inference;
pub mod openapi;
pub mod phases;
pub mod probe;
pub mod process;
pub mod server;
pub mod service;
pub mod telemetry;
pub mod worker;

pub use config::{ComputeArgs, DTypeArg, DeviceArg, ServeArgs};
pub use error::ApiError;
pub use metrics::Metrics;
pub use phases::{InitPhases, Phase};
pub use probe::ProbeArgs;
pub use process::{keep_large_allocations, pin_compute_threads, run_at_idle_priority};
pub use server::{app, run, sha256_file, shutdown_signal, ModelCard, ServiceContext};
pub use service::Service;
pub use worker::{Arrival, JobQueue, ModelWorker};

/// What every binary does first in `main`: sets the process up before any other thread starts
/// (the compute threads, the allocator, and, as a Lambda function, the Runtime API's paths),
/// parses the command line, and starts logging: JSON lines when `is_service` says the command
/// serves, plain text for the command-line tools.
pub fn start<C: clap::Parser>(is_service: impl FnOnce(&C) -> bool) -> C {
    pin_compute_threads();
    lambda::prepare_environment();
    keep_large_allocations();
    let cli = C::parse();
    let mode = if is_service(&cli) {
        telemetry::LogMode::Service
    } else {
        telemetry::LogMode::Cli
    };
    telemetry::init(mode);
    cli
}

/// Where requests come from: a port, or AWS Lambda's Runtime API.
#[derive(Debug)]
pub enum Listener {
    Tcp(std::net::TcpListener),
    Lambda(lambda::InvokeMode),
}

/// Binds the service's port (the last init phase: nothing listens before the model is ready);
/// as a Lambda function, where invocations come from the Runtime API, binds nothing.
pub fn bind(args: &ServeArgs, phases: &mut InitPhases) -> Result<Listener, std::process::ExitCode> {
    if lambda::is_lambda() {
        return lambda::InvokeMode::from_env()
            .map(Listener::Lambda)
            .map_err(|e| startup_failure(&e));
    }
    phases
        .run("bind", || std::net::TcpListener::bind((args.host, args.port)))
        .map(Listener::Tcp)
        .map_err(|e| startup_failure(&format!("cannot listen on {}:{}: {e}", args.host, args.port)))
}

/// Serves `routes` (plus health, metrics and the model card) from `listener` until SIGTERM or
/// SIGINT, then drains; answers the process's exit code.
pub fn serve(
    ctx: std::sync::Arc<ServiceContext>,
    routes: axum::Router,
    args: &ServeArgs,
    listener: Listener,
) -> std::process::ExitCode {
    let app = app(ctx.clone(), routes, args);
    process::raise_open_files_limit();
    let served = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .and_then(|rt| {
            rt.block_on(async {
                let listener = match listener {
                    Listener::Tcp(listener) => listener,
                    Listener::Lambda(mode) => {
                        return lambda::run(app, mode).await.map_err(std::io::Error::other);
                    }
                };
                listener.set_nonblocking(true)?;
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let limits = connections::ConnectionLimits {
                    max_connections: args.max_connections,
                    header_timeout: args.header_timeout,
                };
                run(
                    listener,
                    app,
                    ctx,
                    limits,
                    shutdown_signal(),
                    args.shutdown_timeout,
                )
                .await
            })
        });
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Exit code for bad configuration or unusable weights (after one clear line on stderr).
pub const EXIT_CONFIG: u8 = 2;

/// Reports a start-up failure as one line on stderr and one JSON log line, and gives the exit
/// code for it.
pub fn startup_failure(error: &dyn std::fmt::Display) -> std::process::ExitCode {
    tracing::error!(error = %error, "start-up failed");
    eprintln!("error: {error}");
    std::process::ExitCode::from(EXIT_CONFIG)
}
