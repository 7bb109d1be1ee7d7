//! The OpenAPI 3.1 description served at `/openapi.json`: each service's routes from their
//! request and answer types (`utoipa`), the shared routes, and on every route of the service
//! the errors the middleware answers, with the limits this process was started with.

use std::sync::OnceLock;

use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr};
use utoipa::ToSchema;

use crate::config::ServeArgs;
use crate::phases::Phase;

/// An error, OpenAI's shape: how every route outside `/v2/` answers one.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// What went wrong, quoting at most the start of the client's value.
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `rate_limit_error` or `server_error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// A stable reason: `invalid_image`, `overloaded`, `timeout`...
    pub code: &'static str,
}

/// An error under `/v2/`, the Open Inference Protocol's shape.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenInferenceError {
    pub error: String,
}

/// Readiness (`/health`, `/v2/health/ready`).
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ready`, or `shutting_down` (with 503).
    pub status: &'static str,
    pub ready: bool,
    pub model: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<&'static str>,
}

/// Liveness (`/v2/health/live`).
#[derive(Debug, Serialize, ToSchema)]
pub struct Live {
    pub status: &'static str,
    pub live: bool,
}

/// `/v1/models`: the one model served.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelEntry>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelEntry {
    pub id: String,
    pub object: &'static str,
    pub owned_by: &'static str,
    /// A directory, or a hub repo id.
    pub source: String,
    /// `sha256:<hex>` of the weights file.
    pub checksum: String,
    pub device: String,
    pub dtype: String,
    /// The level of vector instructions the kernels run at.
    pub kernels: String,
    /// Service-specific facts: labels, preprocessing, vocabulary, corpus...
    #[schema(value_type = Object)]
    pub details: Value,
    pub init_phases: Vec<Phase>,
    pub init_ms: f64,
}

/// The description a service serves, written on the first request for it rather than at start:
/// the cold start is what users measure, and most processes are never asked.
pub struct Description {
    build: Box<dyn Fn() -> OpenApi + Send + Sync>,
    json: OnceLock<String>,
}

impl Description {
    pub fn new(build: impl Fn() -> OpenApi + Send + Sync + 'static) -> Self {
        Self {
            build: Box::new(build),
            json: OnceLock::new(),
        }
    }

    /// The description as JSON, written once.
    pub fn json(&self) -> Result<&str, serde_json::Error> {
        if let Some(json) = self.json.get() {
            return Ok(json);
        }
        let json = serde_json::to_string(&(self.build)())?;
        Ok(self.json.get_or_init(|| json))
    }
}

impl std::fmt::Debug for Description {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Description")
    }
}

/// The statuses the middleware answers on every route of a service, and why.
fn middleware_errors(args: &ServeArgs) -> [(&'static str, String); 6] {
    [
        ("401", "`Authorization: Bearer <key>` missing or wrong, when the server has `--api-key`".into()),
        ("408", format!("the body did not arrive within {} s (`--body-timeout`)", args.body_timeout.as_secs_f64())),
        ("413", format!("the body is over {} bytes (`--max-body-bytes`)", args.max_body_bytes)),
        (
            "429",
            format!(
                "over {} requests at once (`--max-concurrency`), the bodies held at once over {} bytes (`--max-buffered-bytes`), or the model queue full; with `Retry-After`",
                args.max_concurrency,
                args.buffered_bytes_budget()
            ),
        ),
        ("500", "a bug; the process carries on".into()),
        (
            "503",
            format!("over {} s (`--request-timeout`), or shutting down; with `Retry-After`", args.request_timeout.as_secs_f64()),
        ),
    ]
}

/// The whole description: `service`'s routes, each with the middleware's errors, and `shared`.
pub fn document(mut service: OpenApi, shared: OpenApi, name: &str, args: &ServeArgs) -> OpenApi {
    for (path, item) in service.paths.paths.iter_mut() {
        let schema = if path.starts_with("/v2") {
            "OpenInferenceError"
        } else {
            "ErrorBody"
        };
        let operations = [&mut item.get, &mut item.post];
        for operation in operations.into_iter().flatten() {
            for (status, why) in middleware_errors(args) {
                let content = ContentBuilder::new()
                    .schema(Some(RefOr::Ref(Ref::from_schema_name(schema))))
                    .build();
                let response = ResponseBuilder::new()
                    .description(why)
                    .content("application/json", content)
                    .build();
                operation
                    .responses
                    .responses
                    .entry(status.to_string())
                    .or_insert(RefOr::T(response));
            }
        }
    }
    service.merge(shared);
    service.info.title = name.to_string();
    service.info.version = env!("CARGO_PKG_VERSION").to_string();
    service.info.description = Some(format!(
        "The {name} service. Limits of this process: bodies up to {} bytes, {} requests at once, {} s a request.",
        args.max_body_bytes,
        args.max_concurrency,
        args.request_timeout.as_secs_f64()
    ));
    service
}

/// Gives the POST operation of `path` to each of `aliases` too, as the router does (`{engine}`
/// in an alias is a path parameter: whatever the client names, one model is served).
pub fn alias(doc: &mut OpenApi, path: &str, aliases: &[&str]) {
    use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
    use utoipa::openapi::{ObjectBuilder, Required, Type};
    let Some(operation) = doc.paths.paths.get(path).and_then(|item| item.post.clone()) else {
        return;
    };
    for alias in aliases {
        let mut copy = operation.clone();
        let suffix: String = alias
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        copy.operation_id = copy.operation_id.map(|id| format!("{id}{suffix}"));
        if alias.contains("{engine}") {
            let engine = ParameterBuilder::new()
                .name("engine")
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .description(Some("any name: the service serves one model"))
                .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                .build();
            copy.parameters
                .get_or_insert_with(Vec::new)
                .push(RefOr::T(engine));
        }
        doc.paths.paths.entry(alias.to_string()).or_default().post = Some(copy);
    }
}
