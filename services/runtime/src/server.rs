//! The HTTP side of the FaaS contract: operational routes (health, metrics, model card), the
//! middleware every request passes (metrics, JSON errors, bodies within their bounds, API key,
//! concurrency and time limits), and a server that drains in-flight requests on shutdown.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::body::{self, BodyIntake};
use crate::config::ServeArgs;
use crate::connections::{self, ConnectionLimits};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::openapi::{Health, Live, ModelEntry, ModelList};
use crate::phases::Phase;

/// What `/v1/models` says about the served model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelCard {
    /// The model's name in answers (`model` fields).
    pub id: String,
    /// Where the weights came from: a directory or a hub repo id.
    pub source: String,
    pub device: String,
    pub dtype: String,
    /// The level of vector instructions the CPU kernels run at (`avx512-bf16`, `avx2`, ...).
    pub kernels: String,
    /// Service-specific facts (labels, vocabulary size, input size...).
    pub details: Value,
    /// The weights file, hashed on the first `/v1/models` request rather than at start-up.
    #[serde(skip)]
    pub weights_path: PathBuf,
}

impl ModelCard {
    /// The card with the name `--served-model-name` gives, if it gives one.
    pub fn served_as(self, name: Option<&str>) -> Self {
        match name {
            Some(name) => Self {
                id: name.to_string(),
                ..self
            },
            None => self,
        }
    }
}

/// State shared by the operational routes and the middleware.
#[derive(Debug)]
pub struct ServiceContext {
    /// The service's name (`classifier`, `textgen`), used as a metrics prefix.
    pub service: &'static str,
    pub card: ModelCard,
    pub phases: Vec<Phase>,
    pub metrics: Arc<Metrics>,
    /// The service's playground page, served at `GET /` without the API key (the calls it
    /// makes send the key the user types in).
    pub playground: &'static str,
    /// The OpenAPI description, served at `/openapi.json`.
    pub openapi: crate::openapi::Description,
    shutting_down: AtomicBool,
    checksum: OnceLock<String>,
}

impl ServiceContext {
    pub fn new(
        service: &'static str,
        card: ModelCard,
        phases: Vec<Phase>,
        metrics: Arc<Metrics>,
        playground: &'static str,
        openapi: crate::openapi::Description,
    ) -> Arc<Self> {
        Arc::new(Self {
            service,
            card,
            phases,
            metrics,
            playground,
            openapi,
            shutting_down: AtomicBool::new(false),
            checksum: OnceLock::new(),
        })
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// SHA-256 of the weights file, computed once.
    fn checksum(&self) -> String {
        self.checksum
            .get_or_init(|| match sha256_file(&self.card.weights_path) {
                Ok(checksum) => checksum,
                Err(e) => format!("unavailable: {e}"),
            })
            .clone()
    }
}

/// `sha256:<hex>` of a file: how a model card and a trained head name a weights file.
pub fn sha256_file(path: &std::path::Path) -> std::io::Result<String> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    let hex: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("sha256:{hex}"))
}

/// The settings the middleware enforces.
struct Limits {
    permits: Arc<Semaphore>,
    max_concurrency: usize,
    timeout: Duration,
}

/// The whole application: the service's own `routes` (limited in concurrency and time) plus
/// the operational routes, behind the shared middleware.
pub fn app(ctx: Arc<ServiceContext>, routes: Router, args: &ServeArgs) -> Router {
    let limits = Arc::new(Limits {
        permits: Arc::new(Semaphore::new(args.max_concurrency)),
        max_concurrency: args.max_concurrency,
        timeout: args.request_timeout,
    });
    let intake = Arc::new(BodyIntake::new(
        args.max_body_bytes,
        args.body_timeout,
        args.buffered_bytes_budget(),
        ctx.metrics.clone(),
    ));
    let protected = routes
        .route_layer(middleware::from_fn_with_state(limits, limit))
        .merge(
            Router::new()
                .route("/metrics", get(metrics))
                .route("/v1/models", get(models))
                .with_state(ctx.clone()),
        )
        .route_layer(middleware::from_fn_with_state(
            args.api_key.as_deref().map(ApiKey::new).map(Arc::new),
            authorize,
        ));
    let app = Router::new()
        .route("/health", get(health))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/playground.css", get(playground_css))
        .route("/playground.js", get(playground_js))
        .route("/", get(playground))
        .route("/openapi.json", get(openapi_json))
        .with_state(ctx.clone())
        .merge(protected)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(args.max_body_bytes))
        .layer(middleware::from_fn_with_state(intake, body::buffer_body))
        .layer(middleware::from_fn(json_errors));
    let app = match cors(&args.cors_allow_origin) {
        Some(cors) => app.layer(cors),
        None => app,
    };
    app.layer(middleware::from_fn_with_state(ctx, observe))
}

/// Browsers' cross-origin calls from `origins` (`*`: any), answered before the API key is
/// asked for: a preflight carries no credentials.
fn cors(origins: &[HeaderValue]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allowed = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().cloned())
    };
    Some(
        CorsLayer::new()
            .allow_origin(allowed)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
            .expose_headers([HeaderName::from_static("x-latency-ms")])
            .max_age(Duration::from_secs(3600)),
    )
}

/// Serves `app` on `listener`, within `limits`, until `shutdown` completes, then stops
/// accepting and lets in-flight requests finish for up to `drain`.
pub async fn run(
    listener: TcpListener,
    app: Router,
    ctx: Arc<ServiceContext>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> std::io::Result<()> {
    let address = listener.local_addr()?;
    let init_ms = ctx
        .phases
        .iter()
        .map(|p| p.duration)
        .sum::<Duration>()
        .as_secs_f64()
        * 1e3;
    tracing::info!(%address, init_ms, model = %ctx.card.id, "ready");
    let (signalled, on_signal) = tokio::sync::oneshot::channel();
    let stopping = ctx.clone();
    let server = connections::serve(listener, app, limits, ctx.metrics.clone(), async move {
        shutdown.await;
        stopping.shutting_down.store(true, Ordering::Relaxed);
        tracing::info!(
            in_flight = stopping.metrics.in_flight(),
            "shutting down: draining in-flight requests"
        );
        let _ = signalled.send(());
    });
    let deadline = async move {
        match on_signal.await {
            Ok(()) => tokio::time::sleep(drain).await,
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = server => tracing::info!("stopped"),
        () = deadline => {
            tracing::warn!(in_flight = ctx.metrics.in_flight(), "shutdown timeout: abandoning in-flight requests");
        }
    }
    Ok(())
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

/// The routes every service shares, for its OpenAPI description.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        health,
        ready,
        live,
        models,
        metrics,
        openapi_json,
        playground,
        playground_css,
        playground_js
    ),
    components(schemas(crate::openapi::ErrorBody, crate::openapi::OpenInferenceError))
)]
pub struct SharedRoutes;

/// The playground pages' shared style sheet (each service serves its own page at `GET /`).
#[utoipa::path(get, path = "/playground.css", tag = "playground", responses((status = 200, description = "the style sheet", content_type = "text/css")))]
async fn playground_css() -> Response {
    const CSS: &str = include_str!("../assets/playground.css");
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response()
}

/// The playground pages' shared script: element lookup, the API key, error messages.
#[utoipa::path(get, path = "/playground.js", tag = "playground", responses((status = 200, description = "the script", content_type = "text/javascript")))]
async fn playground_js() -> Response {
    const JS: &str = include_str!("../assets/playground.js");
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], JS).into_response()
}

/// The service's playground page, HTML shipped inside the binary.
#[utoipa::path(get, path = "/", tag = "playground", responses((status = 200, description = "the playground page", content_type = "text/html")))]
async fn playground(State(ctx): State<Arc<ServiceContext>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        ctx.playground,
    )
        .into_response()
}

/// This OpenAPI description.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI 3.1", content_type = "application/json")))]
async fn openapi_json(State(ctx): State<Arc<ServiceContext>>) -> Response {
    match ctx.openapi.json() {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json.to_string()).into_response(),
        Err(e) => ApiError::internal(format!("cannot write the OpenAPI description: {e}")).into_response(),
    }
}

/// Readiness: 200 once the model answers, 503 while draining. `ready` is the field KServe's
/// clients read; `status` the one people do.
#[utoipa::path(get, path = "/health", tag = "operations", responses(
    (status = 200, description = "ready", body = Health),
    (status = 503, description = "shutting down", body = Health)
))]
async fn health(State(ctx): State<Arc<ServiceContext>>) -> Response {
    if ctx.is_shutting_down() {
        let body = Health {
            status: "shutting_down",
            ready: false,
            model: ctx.card.id.clone(),
            service: None,
        };
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    Json(Health {
        status: "ready",
        ready: true,
        model: ctx.card.id.clone(),
        service: Some(ctx.service),
    })
    .into_response()
}

/// KServe's readiness route: the same as `/health`.
#[utoipa::path(get, path = "/v2/health/ready", tag = "operations", responses(
    (status = 200, description = "ready", body = Health),
    (status = 503, description = "shutting down", body = Health)
))]
async fn ready(state: State<Arc<ServiceContext>>) -> Response {
    health(state).await
}

/// Liveness: 200 while the process runs.
#[utoipa::path(get, path = "/v2/health/live", tag = "operations", responses((status = 200, description = "live", body = Live)))]
async fn live() -> Json<Live> {
    Json(Live {
        status: "live",
        live: true,
    })
}

/// Prometheus metrics: requests, latencies, batches, init phases.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics(State(ctx): State<Arc<ServiceContext>>) -> Response {
    let body = ctx.metrics.render(ctx.service, &ctx.card, &ctx.phases);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// The model card: the model served, where its weights came from, their checksum, the kernels.
#[utoipa::path(get, path = "/v1/models", tag = "operations", responses((status = 200, description = "the answer", body = ModelList)))]
async fn models(State(ctx): State<Arc<ServiceContext>>) -> Result<Json<ModelList>, ApiError> {
    let hashing = ctx.clone();
    let checksum = tokio::task::spawn_blocking(move || hashing.checksum())
        .await
        .map_err(|e| ApiError::internal(format!("checksum task failed: {e}")))?;
    let card = &ctx.card;
    let init_ms = ctx
        .phases
        .iter()
        .map(|p| p.duration)
        .sum::<Duration>()
        .as_secs_f64()
        * 1e3;
    Ok(Json(ModelList {
        object: "list",
        data: vec![ModelEntry {
            id: card.id.clone(),
            object: "model",
            owned_by: "self-hosted",
            source: card.source.clone(),
            checksum,
            device: card.device.clone(),
            dtype: card.dtype.clone(),
            kernels: card.kernels.clone(),
            details: card.details.clone(),
            init_phases: ctx.phases.clone(),
            init_ms,
        }],
    }))
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {} {}", request.method(), request.uri().path()),
    )
}

/// Needs `Authorization: Bearer <key>` when a key is configured.
async fn authorize(State(key): State<Option<Arc<ApiKey>>>, request: Request, next: Next) -> Response {
    if let Some(key) = key {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !presented.is_some_and(|presented| key.matches(presented)) {
            let message = if presented.is_some() {
                "invalid API key"
            } else {
                "missing API key: send Authorization: Bearer <key>"
            };
            return ApiError::new(StatusCode::UNAUTHORIZED, "invalid_api_key", message).into_response();
        }
    }
    next.run(request).await
}

/// The configured API key, held as its SHA-256 digest (computed once), which a presented key's
/// digest is compared with.
struct ApiKey([u8; 32]);

impl ApiKey {
    fn new(key: &str) -> Self {
        Self(Self::digest(key))
    }

    fn digest(key: &str) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(key).into()
    }

    /// Whether `presented` is the key, in a time that tells nothing of either: the digests are
    /// compared (so not even the length shows), without stopping at the first difference.
    fn matches(&self, presented: &str) -> bool {
        let presented = Self::digest(presented);
        let difference = presented.iter().zip(&self.0).fold(0u8, |difference, (a, b)| {
            std::hint::black_box(difference | (a ^ b))
        });
        difference == 0
    }
}

/// Refuses work beyond the concurrency limit at once (429) and bounds each request's time.
async fn limit(State(limits): State<Arc<Limits>>, request: Request, next: Next) -> Response {
    let Ok(_permit) = limits.permits.clone().try_acquire_owned() else {
        return ApiError::overloaded(format!(
            "the server is answering {} requests, its limit; retry shortly",
            limits.max_concurrency
        ))
        .into_response();
    };
    match tokio::time::timeout(limits.timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::unavailable(
            "timeout",
            format!(
                "the request took longer than {:.1} s",
                limits.timeout.as_secs_f64()
            ),
        )
        .into_response(),
    }
}

/// Rewrites framework rejections (unknown method, body too large, bad JSON...) that come as
/// plain text into the JSON error body every other error has; under `/v2/`, KServe's Open
/// Inference Protocol, every error takes that protocol's shape, `{"error": "..."}`.
async fn json_errors(request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let open_inference = path == "/v2" || path.starts_with("/v2/");
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let (mut parts, body) = response.into_parts();
    let error = match parts.extensions.remove::<ApiError>() {
        Some(error) if open_inference => error,
        Some(error) => {
            parts.extensions.insert(error);
            return Response::from_parts(parts, body);
        }
        None if is_json => return Response::from_parts(parts, body),
        None => {
            let text = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
            let message = match String::from_utf8_lossy(&text).trim() {
                "" => status.canonical_reason().unwrap_or("error").to_string(),
                text => text.to_string(),
            };
            ApiError::from_status(status, message)
        }
    };
    let mut rewritten = if open_inference {
        (error.status, Json(error.open_inference_body())).into_response()
    } else {
        error.into_response()
    };
    for name in [header::ALLOW, header::RETRY_AFTER, header::CONNECTION] {
        if let Some(value) = parts.headers.get(&name) {
            rewritten.headers_mut().insert(name, value.clone());
        }
    }
    rewritten
}

/// Counts, times and logs every request.
async fn observe(State(ctx): State<Arc<ServiceContext>>, request: Request<Body>, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = request.method().to_string();
    let start = Instant::now();
    ctx.metrics.request_started();
    let mut response = next.run(request).await;
    ctx.metrics.request_finished();
    let latency = start.elapsed();
    let status = response.status().as_u16();
    ctx.metrics.observe_request(&route, &method, status, latency);
    tracing::info!(%method, %route, status, latency_ms = latency.as_secs_f64() * 1e3, "request");
    if let Ok(value) = HeaderValue::from_str(&format!("{:.3}", latency.as_secs_f64() * 1e3)) {
        response.headers_mut().insert("x-latency-ms", value);
    }
    response
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::post;
    use axum::Router;
    use clap::Parser;
    use serde_json::Value;
    use tokio::sync::Notify;
    use tower::ServiceExt;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn settings(flags: &[&str]) -> ServeArgs {
        Flags::parse_from(std::iter::once("test").chain(flags.iter().copied())).serve
    }

    fn context() -> Arc<ServiceContext> {
        let card = ModelCard {
            id: "test-model".into(),
            source: "test".into(),
            device: "cpu".into(),
            dtype: "f32".into(),
            kernels: "portable".into(),
            details: Value::Null,
            weights_path: PathBuf::from("/nonexistent"),
        };
        ServiceContext::new(
            "test",
            card,
            Vec::new(),
            Arc::new(Metrics::default()),
            "<!doctype html>",
            crate::openapi::Description::new(utoipa::openapi::OpenApi::default),
        )
    }

    /// The app over routes that echo a body, wait until released, or sleep.
    fn test_app(flags: &[&str], release: Arc<Notify>) -> Router {
        let routes = Router::new()
            .route("/v1/echo", post(|body: String| async move { body }))
            .route(
                "/v1/wait",
                post(move || async move {
                    release.notified().await;
                    "released"
                }),
            )
            .route("/v2/models/m/infer", post(|| async { "inferred" }));
        app(context(), routes, &settings(flags))
    }

    async fn call(
        app: &Router,
        method: &str,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = app
            .clone()
            .oneshot(request.body(Body::from(body.to_string())).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into())),
        )
    }

    #[tokio::test]
    async fn the_api_key_guards_every_route_but_health() {
        let app = test_app(&["--api-key", "secret"], Arc::new(Notify::new()));
        let (status, body) = call(&app, "POST", "/v1/echo", "hi", &[]).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("invalid_api_key"))
        );
        let (status, _) = call(
            &app,
            "POST",
            "/v1/echo",
            "hi",
            &[("authorization", "Bearer wrong")],
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, body) = call(
            &app,
            "POST",
            "/v1/echo",
            "hi",
            &[("authorization", "Bearer secret")],
        )
        .await;
        assert_eq!((status, body), (StatusCode::OK, Value::String("hi".into())));
        let (status, body) = call(&app, "GET", "/v2/health/ready", "", &[]).await;
        assert_eq!((status, body["ready"].as_bool()), (StatusCode::OK, Some(true)));
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_413_json() {
        let app = test_app(&["--max-body-bytes", "100"], Arc::new(Notify::new()));
        let (status, body) = call(&app, "POST", "/v1/echo", &"x".repeat(101), &[]).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
        );
        let (status, _) = call(&app, "POST", "/v1/echo", &"x".repeat(100), &[]).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn past_the_concurrency_limit_is_429_at_once_and_a_slow_request_503() {
        let release = Arc::new(Notify::new());
        let app = test_app(
            &["--max-concurrency", "1", "--request-timeout", "0.2"],
            release.clone(),
        );
        let holding = tokio::spawn({
            let app = app.clone();
            async move { call(&app, "POST", "/v1/wait", "", &[]).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (status, body) = call(&app, "POST", "/v1/echo", "hi", &[]).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::TOO_MANY_REQUESTS, Some("overloaded"))
        );
        // Never released: the held request runs into the request timeout.
        let (status, body) = holding.await.unwrap();
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("timeout"))
        );
        let (status, _) = call(&app, "POST", "/v1/echo", "hi", &[]).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn framework_rejections_are_json_and_v2_errors_take_the_protocols_shape() {
        let app = test_app(&[], Arc::new(Notify::new()));
        let (status, body) = call(&app, "GET", "/nowhere", "", &[]).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found"))
        );
        let (status, body) = call(&app, "GET", "/v1/echo", "", &[]).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
        );
        let (status, body) = call(&app, "GET", "/v2/models/m/infer", "", &[]).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(body["error"].is_string(), "{body}");
    }

    #[tokio::test]
    async fn cors_preflights_are_answered_without_the_api_key() {
        let app = test_app(
            &["--cors-allow-origin", "https://app.example.com", "--api-key", "k"],
            Arc::new(Notify::new()),
        );
        let request = Request::builder()
            .method("OPTIONS")
            .uri("/v1/echo")
            .header("origin", "https://app.example.com")
            .header("access-control-request-method", "POST")
            .body(Body::empty())
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response
                .headers()
                .get("access-control-allow-origin")
                .map(|v| v.as_bytes()),
            Some(&b"https://app.example.com"[..])
        );
    }
}
