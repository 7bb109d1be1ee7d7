//! The classifier's HTTP routes: images in, labels or feature vectors out.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::routing::post;
use axum::{Json, Router};
use runtime::openapi::ErrorBody;
use runtime::{ApiError, ModelWorker};
use serde::{Deserialize, Serialize};
use vision::{DecodeLimits, ImageClassifier};

use crate::error::api_error;
use crate::intake::{Images, JsonBody};
use crate::model::{self, Job};

/// What the routes share.
pub struct AppState {
    pub classifier: Arc<ImageClassifier>,
    pub worker: ModelWorker<Job>,
    pub model_id: String,
    pub limits: DecodeLimits,
    /// Most images one request may carry.
    pub max_images: usize,
}

/// `/v1/classify` (also `/` and `/invocations`, what FaaS wrappers call) and `/v1/features`.
pub fn routes(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/classify", post(classify))
        .route("/", post(classify))
        .route("/invocations", post(classify))
        .route("/v1/features", post(features))
        .with_state(state)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ClassifyQuery {
    /// Classes per image: 1 to the number of classes; 5 by default (a JSON or multipart
    /// `top_k` wins).
    #[param(minimum = 1)]
    top_k: Option<usize>,
}

/// `/v1/classify`'s answer: one result per image, in the request's order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ClassifyAnswer {
    pub model: String,
    pub results: Vec<ClassifyResult>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ClassifyResult {
    /// The most probable classes, best first.
    pub predictions: Vec<vision::Prediction>,
}

/// `/v1/features`' answer: one pooled feature vector per image.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FeaturesAnswer {
    pub model: String,
    /// Length of each vector.
    pub dim: usize,
    pub results: Vec<FeaturesResult>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FeaturesResult {
    pub features: Vec<f32>,
}

/// The classifier's own routes, for its OpenAPI description.
#[derive(utoipa::OpenApi)]
#[openapi(paths(classify, features))]
pub struct Routes;

/// Classifies images: the top classes of each, with their probabilities. Also at `/` and
/// `/invocations`, what FaaS wrappers call. The image comes as the body (`image/*` or
/// `application/octet-stream`, its format sniffed from the bytes), as multipart file parts, or
/// as base64 strings in JSON.
#[utoipa::path(post, path = "/v1/classify", tag = "classifier", params(ClassifyQuery),
    request_body(content(
        ("image/jpeg"), ("image/png"), ("image/webp"), ("application/octet-stream"),
        ("multipart/form-data"), (JsonBody = "application/json"))),
    responses(
        (status = 200, description = "the answer", body = ClassifyAnswer),
        (status = 400, description = "an empty body, malformed JSON or multipart, no image", body = ErrorBody),
        (status = 415, description = "a missing or unsupported Content-Type", body = ErrorBody),
        (status = 422, description = "an undecodable image, invalid base64, an image over --max-pixels, top_k out of range, too many images, no classifier", body = ErrorBody),
    ))]
async fn classify(
    State(state): State<Arc<AppState>>,
    Query(query): Query<ClassifyQuery>,
    images: Images,
) -> Result<Json<ClassifyAnswer>, ApiError> {
    let top_k = checked_top_k(&state, images.top_k.or(query.top_k))?;
    let outputs = infer(&state, images).await?;
    let results = outputs
        .iter()
        .map(|o| ClassifyResult {
            predictions: state.classifier.top_k(&o.probabilities, top_k),
        })
        .collect();
    Ok(Json(ClassifyAnswer {
        model: state.model_id.clone(),
        results,
    }))
}

/// The backbone's pooled feature vectors of images, sent as to `/v1/classify`.
#[utoipa::path(post, path = "/v1/features", tag = "classifier",
    request_body(content(
        ("image/jpeg"), ("image/png"), ("image/webp"), ("application/octet-stream"),
        ("multipart/form-data"), (JsonBody = "application/json"))),
    responses(
        (status = 200, description = "the answer", body = FeaturesAnswer),
        (status = 400, description = "an empty body, malformed JSON or multipart, no image", body = ErrorBody),
        (status = 415, description = "a missing or unsupported Content-Type", body = ErrorBody),
        (status = 422, description = "an undecodable image, invalid base64, an image over --max-pixels, too many images", body = ErrorBody),
    ))]
async fn features(
    State(state): State<Arc<AppState>>,
    images: Images,
) -> Result<Json<FeaturesAnswer>, ApiError> {
    let outputs = infer(&state, images).await?;
    let results = outputs
        .into_iter()
        .map(|o| FeaturesResult { features: o.features })
        .collect();
    Ok(Json(FeaturesAnswer {
        model: state.model_id.clone(),
        dim: state.classifier.model().feature_dim(),
        results,
    }))
}

/// `requested` classes per image (5 by default, or all when there are fewer), if the model has
/// a classifier with that many classes.
pub(crate) fn checked_top_k(state: &AppState, requested: Option<usize>) -> Result<usize, ApiError> {
    let classes = state.classifier.labels().len();
    if classes == 0 {
        return Err(ApiError::invalid(
            "no_classifier",
            "the served model has no classifier; ask for its features instead",
        ));
    }
    let top_k = requested.unwrap_or(5.min(classes));
    if top_k == 0 || top_k > classes {
        return Err(ApiError::invalid(
            "invalid_top_k",
            format!("top_k must be between 1 and {classes}, got {top_k}"),
        ));
    }
    Ok(top_k)
}

/// Decodes and preprocesses off the async runtime, then runs the model thread.
async fn infer(state: &Arc<AppState>, images: Images) -> Result<Vec<vision::ImageOutput>, ApiError> {
    classify_encoded(state, images.encoded).await
}

/// Runs encoded images (any format the decoder knows) through the model.
pub(crate) async fn classify_encoded(
    state: &Arc<AppState>,
    encoded: Vec<Bytes>,
) -> Result<Vec<vision::ImageOutput>, ApiError> {
    check_count(state, encoded.len())?;
    // Announced before decoding, so that the model thread waits for this request when another
    // one is about to run, and not when none is coming.
    let arrival = state.worker.arriving();
    let prepared = state.clone();
    let pixels = tokio::task::spawn_blocking(move || {
        encoded
            .iter()
            .enumerate()
            .map(|(i, bytes)| {
                let image =
                    vision::decode_image(bytes, prepared.limits).map_err(|e| api_error(e, Some(i)))?;
                Ok(prepared.classifier.preprocessing().apply(&image))
            })
            .collect::<Result<Vec<_>, ApiError>>()
    })
    .await
    .map_err(|e| ApiError::internal(format!("decoding task failed: {e}")))??;
    model::run(&state.worker, pixels, arrival).await
}

/// Runs images already preprocessed, each (height, width, 3) normalised values, through the model.
pub(crate) async fn classify_pixels(
    state: &Arc<AppState>,
    pixels: Vec<Vec<f32>>,
) -> Result<Vec<vision::ImageOutput>, ApiError> {
    check_count(state, pixels.len())?;
    model::run(&state.worker, pixels, state.worker.arriving()).await
}

fn check_count(state: &AppState, images: usize) -> Result<(), ApiError> {
    if images > state.max_images {
        return Err(ApiError::invalid(
            "too_many_images",
            format!(
                "{images} images in one request, over the limit of {}",
                state.max_images
            ),
        ));
    }
    Ok(())
}
