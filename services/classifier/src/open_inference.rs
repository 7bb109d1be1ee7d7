//! KServe's Open Inference Protocol (v2 REST) on the classifier, beside its own API. One input
//! per request, whatever its name: the image files as `BYTES` (base64 strings in the JSON, as
//! KServe's clients send binary values there, or raw bytes through the binary tensor data
//! extension), or pixels already preprocessed as `FP32`, `[N, H, W, 3]` or `[N, 3, H, W]`.
//! Outputs: `probabilities`, and the `top_k` (a request parameter, 5 by default) `labels`,
//! `scores` and `indices`; `features`, the pooled feature vectors, when asked for by name.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use runtime::error::excerpt;
use runtime::open_inference::{
    InferRequest, InferResponse, OutputTensor, RequestJson, TensorData, TensorMetadata,
};
use runtime::openapi::OpenInferenceError;
use runtime::ApiError;
use serde::Serialize;
use serde_json::json;
use vision::ImageOutput;

use crate::intake::decode_base64;
use crate::routes::{self, AppState};

/// The outputs answered when the request names none.
const DEFAULT_OUTPUTS: [&str; 4] = ["probabilities", "labels", "scores", "indices"];

/// Every output the model has.
const OUTPUTS: [&str; 5] = ["probabilities", "labels", "scores", "indices", "features"];

/// `GET /v2`: the server's name, version and protocol extensions.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ServerMetadata {
    pub name: &'static str,
    pub version: &'static str,
    pub extensions: Vec<&'static str>,
}

/// `GET /v2/models/{name}`: the model's inputs and outputs.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: &'static str,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

/// `GET /v2/models/{name}/ready`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelReady {
    pub name: String,
    pub ready: bool,
}

/// The protocol's routes, for the classifier's OpenAPI description.
#[derive(utoipa::OpenApi)]
#[openapi(paths(server_metadata, model_metadata, model_ready, infer))]
pub struct Routes;

/// `/v2` (server metadata) and `/v2/models/{name}[/ready|/infer]`.
pub fn routes(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer))
        .with_state(state)
}

/// The name the protocol serves the model under: its id after the last `/`, since the name is
/// one segment of the path (`timm/mobilenetv2_100.ra_in1k` is `mobilenetv2_100.ra_in1k`). The
/// whole id is taken too, its `/` written `%2F`.
pub fn model_name(model_id: &str) -> &str {
    model_id.rsplit('/').next().unwrap_or(model_id)
}

fn check_name(state: &AppState, name: &str) -> Result<(), ApiError> {
    if name == state.model_id || name == model_name(&state.model_id) {
        return Ok(());
    }
    Err(ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "model_not_found",
        format!(
            "no model `{}` here; this server serves `{}`",
            excerpt(name),
            model_name(&state.model_id)
        ),
    ))
}

/// The server's metadata.
#[utoipa::path(get, path = "/v2", tag = "open inference protocol", responses((status = 200, description = "the answer", body = ServerMetadata)))]
async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: "classifier",
        version: env!("CARGO_PKG_VERSION"),
        extensions: vec!["binary_tensor_data"],
    })
}

/// The model's metadata: its inputs (`image` as BYTES, or `pixels` as FP32; `[N, 3, H, W]` is
/// taken too) and outputs.
#[utoipa::path(get, path = "/v2/models/{name}", tag = "open inference protocol",
    params(("name" = String, Path, description = "the served model name")),
    responses((status = 200, description = "the answer", body = ModelMetadata), (status = 404, description = "another model", body = OpenInferenceError)))]
async fn model_metadata(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<ModelMetadata>, ApiError> {
    check_name(&state, &name)?;
    let [_, height, width] = state.classifier.preprocessing().input_size.map(|d| d as i64);
    let tensor = |name, datatype, shape| TensorMetadata {
        name,
        datatype,
        shape,
    };
    let classes = state.classifier.labels().len() as i64;
    let features = state.classifier.model().feature_dim() as i64;
    Ok(Json(ModelMetadata {
        name: model_name(&state.model_id).to_string(),
        versions: Vec::new(),
        platform: "candle_mobilenetv2",
        inputs: vec![
            tensor("image", "BYTES", vec![-1]),
            tensor("pixels", "FP32", vec![-1, height, width, 3]),
        ],
        outputs: vec![
            tensor("probabilities", "FP32", vec![-1, classes]),
            tensor("labels", "BYTES", vec![-1, -1]),
            tensor("scores", "FP32", vec![-1, -1]),
            tensor("indices", "INT64", vec![-1, -1]),
            tensor("features", "FP32", vec![-1, features]),
        ],
    }))
}

/// Whether the model answers.
#[utoipa::path(get, path = "/v2/models/{name}/ready", tag = "open inference protocol",
    params(("name" = String, Path, description = "the served model name")),
    responses((status = 200, description = "the answer", body = ModelReady), (status = 404, description = "another model", body = OpenInferenceError)))]
async fn model_ready(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<ModelReady>, ApiError> {
    check_name(&state, &name)?;
    Ok(Json(ModelReady {
        name: model_name(&state.model_id).to_string(),
        ready: true,
    }))
}

/// An inference: one input, the image files as BYTES (base64 strings in the JSON, or raw
/// through the binary tensor data extension, `Inference-Header-Content-Length` giving the
/// JSON's length) or preprocessed pixels as FP32; the request parameter `top_k` (default 5).
#[utoipa::path(post, path = "/v2/models/{name}/infer", tag = "open inference protocol",
    params(("name" = String, Path, description = "the served model name")),
    request_body(content((RequestJson = "application/json"), ("application/octet-stream"))),
    responses(
        (status = 200, description = "the answer", body = InferResponse),
        (status = 400, description = "a malformed request, a shape that does not hold the data, not one input, an unknown output", body = OpenInferenceError),
        (status = 404, description = "another model", body = OpenInferenceError),
        (status = 422, description = "an undecodable image, invalid base64, pixels of the wrong shape or not finite, top_k out of range", body = OpenInferenceError),
    ))]
async fn infer(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<InferResponse>, ApiError> {
    check_name(&state, &name)?;
    let request = InferRequest::parse(&headers, &body)?;
    drop(body);
    let wanted = wanted_outputs(&request)?;
    let top_k = match request.parameters.get("top_k") {
        None => None,
        Some(value) => Some(
            value
                .as_u64()
                .and_then(|k| usize::try_from(k).ok())
                .ok_or_else(|| {
                    ApiError::invalid(
                        "invalid_top_k",
                        format!(
                            "top_k `{}` is not a non-negative integer",
                            excerpt(&value.to_string())
                        ),
                    )
                })?,
        ),
    };
    let ranked = wanted.iter().any(|o| o != &"features");
    let top_k = if ranked {
        routes::checked_top_k(&state, top_k)?
    } else {
        0
    };
    let [input] = <[_; 1]>::try_from(request.inputs).map_err(|inputs| {
        ApiError::bad_request(format!(
            "{} inputs; the classifier takes one: image files (BYTES) or their pixels (FP32)",
            inputs.len()
        ))
    })?;
    if input.data.is_empty() {
        return Err(ApiError::bad_request(format!(
            "input `{}` holds no image",
            excerpt(&input.name)
        )));
    }
    let outputs = match input.data {
        TensorData::Text(strings) => {
            let encoded = strings
                .iter()
                .enumerate()
                .map(|(i, text)| {
                    decode_base64(text).map_err(|e| {
                        ApiError::invalid(
                            "invalid_base64",
                            format!("input `{}`[{i}]: {e}", excerpt(&input.name)),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            routes::classify_encoded(&state, encoded).await?
        }
        TensorData::Binary(encoded) => routes::classify_encoded(&state, encoded).await?,
        TensorData::Fp32(values) => {
            let pixels = images_of_pixels(&state, &input.name, &input.shape, &values)?;
            drop(values);
            routes::classify_pixels(&state, pixels).await?
        }
    };
    Ok(Json(InferResponse {
        model_name: model_name(&state.model_id).to_string(),
        id: request.id,
        outputs: wanted
            .iter()
            .map(|name| output_tensor(&state, name, &outputs, top_k))
            .collect(),
    }))
}

/// The outputs the request names, checked, or the default ones.
fn wanted_outputs(request: &InferRequest) -> Result<Vec<&'static str>, ApiError> {
    if request.outputs.is_empty() {
        return Ok(DEFAULT_OUTPUTS.to_vec());
    }
    request
        .outputs
        .iter()
        .map(|output| {
            OUTPUTS
                .into_iter()
                .find(|known| *known == output.name)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "no output `{}`; the outputs are {}",
                        excerpt(&output.name),
                        OUTPUTS.join(", ")
                    ))
                })
        })
        .collect()
}

/// Splits a preprocessed batch, `[N, H, W, 3]` or `[N, 3, H, W]`, into (H, W, 3) images.
fn images_of_pixels(
    state: &AppState,
    input: &str,
    shape: &[usize],
    values: &[f32],
) -> Result<Vec<Vec<f32>>, ApiError> {
    let [_, height, width] = state.classifier.preprocessing().input_size;
    let channels_last = match *shape {
        [_, h, w, 3] if (h, w) == (height, width) => true,
        [_, 3, h, w] if (h, w) == (height, width) => false,
        _ => {
            return Err(ApiError::invalid(
                "invalid_shape",
                format!(
                    "input `{}` has shape {shape:?}; pixels are [N, {height}, {width}, 3] or [N, 3, {height}, {width}]",
                    excerpt(input)
                ),
            ))
        }
    };
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(ApiError::invalid(
            "invalid_pixels",
            format!("input `{}` holds {} at {i}", excerpt(input), values[i]),
        ));
    }
    let plane = height * width;
    Ok(values
        .chunks_exact(plane * 3)
        .map(|image| {
            if channels_last {
                image.to_vec()
            } else {
                (0..plane)
                    .flat_map(|p| (0..3).map(move |c| image[c * plane + p]))
                    .collect()
            }
        })
        .collect())
}

fn output_tensor(
    state: &AppState,
    name: &'static str,
    outputs: &[ImageOutput],
    top_k: usize,
) -> OutputTensor {
    let images = outputs.len();
    let ranked = || {
        outputs
            .iter()
            .flat_map(|o| state.classifier.top_k(&o.probabilities, top_k))
    };
    let (datatype, shape, data) = match name {
        "probabilities" => (
            "FP32",
            vec![images, state.classifier.labels().len()],
            json!(outputs
                .iter()
                .flat_map(|o| o.probabilities.iter())
                .collect::<Vec<_>>()),
        ),
        "labels" => (
            "BYTES",
            vec![images, top_k],
            json!(ranked().map(|p| p.label).collect::<Vec<_>>()),
        ),
        "scores" => (
            "FP32",
            vec![images, top_k],
            json!(ranked().map(|p| p.score).collect::<Vec<_>>()),
        ),
        "indices" => (
            "INT64",
            vec![images, top_k],
            json!(ranked().map(|p| p.index).collect::<Vec<_>>()),
        ),
        // "features", the one left of OUTPUTS.
        _ => (
            "FP32",
            vec![images, state.classifier.model().feature_dim()],
            json!(outputs.iter().flat_map(|o| o.features.iter()).collect::<Vec<_>>()),
        ),
    };
    OutputTensor {
        name,
        datatype,
        shape,
        data,
    }
}
