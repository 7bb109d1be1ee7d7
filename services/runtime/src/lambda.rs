//! Serving through AWS Lambda's Runtime API instead of a port, when the process runs as a Lambda
//! function (`AWS_LAMBDA_RUNTIME_API` is set): each invocation's event becomes an HTTP request
//! to the same router, middleware and all. The model loads and warms up before the first call
//! for an event, so it happens in Lambda's init phase, not in the first invocation.

use axum::Router;

/// `LAMBDA_INVOKE_MODE`: `buffered` (the default; what API Gateway takes) or
/// `response_stream` (a Function URL with `InvokeMode: RESPONSE_STREAM`: server-sent events
/// reach the client as they are written).
const INVOKE_MODE: &str = "LAMBDA_INVOKE_MODE";

/// As a Lambda function, asks `lambda_http` to leave API Gateway's stage out of request paths
/// (`AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH`, unless it is set already): a REST API's
/// `/prod/v1/classify` is the route `/v1/classify`, as it is behind a Function URL. Call it
/// first in `main`, before any thread starts.
pub fn prepare_environment() {
    const IGNORE_STAGE: &str = "AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH";
    if is_lambda() && std::env::var_os(IGNORE_STAGE).is_none() {
        // Sound only while no other thread can read the environment (see
        // `process::pin_compute_threads`).
        std::env::set_var(IGNORE_STAGE, "true");
    }
}

/// Whether the process runs as a Lambda function.
pub fn is_lambda() -> bool {
    std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some()
}

/// How answers go back to Lambda.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvokeMode {
    Buffered,
    ResponseStream,
}

impl InvokeMode {
    /// The mode `LAMBDA_INVOKE_MODE` names.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var(INVOKE_MODE).as_deref() {
            Err(_) | Ok("buffered") => Ok(Self::Buffered),
            Ok("response_stream") => Ok(Self::ResponseStream),
            Ok(other) => Err(format!(
                "{INVOKE_MODE} is `{other}`; it is `buffered` or `response_stream`"
            )),
        }
    }
}

/// Answers invocations with `app` until the Runtime API goes away.
pub async fn run(app: Router, mode: InvokeMode) -> Result<(), lambda_http::Error> {
    tracing::info!(?mode, "ready: serving AWS Lambda invocations");
    match mode {
        InvokeMode::Buffered => lambda_http::run(app).await,
        InvokeMode::ResponseStream => lambda_http::run_with_streaming_response(app).await,
    }
}
