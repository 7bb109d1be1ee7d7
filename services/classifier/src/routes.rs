//! The classifier's HTTP routes: images in, labels or feature vectors out.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::routing::post;
use axum::{Json, Router};
use runtime::{ApiError, ModelWorker};
use serde::Deserialize;
use serde_json::{json, Value};
use vision::{DecodeLimits, ImageClassifier};

use crate::error::api_error;
use crate::intake::Images;
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

#[derive(Debug, Deserialize)]
struct ClassifyQuery {
    top_k: Option<usize>,
}

async fn classify(
    State(state): State<Arc<AppState>>,
    Query(query): Query<ClassifyQuery>,
    images: Images,
) -> Result<Json<Value>, ApiError> {
    let top_k = checked_top_k(&state, images.top_k.or(query.top_k))?;
    let outputs = infer(&state, images).await?;
    let results: Vec<Value> = outputs
        .iter()
        .map(|o| json!({"predictions": state.classifier.top_k(&o.probabilities, top_k)}))
        .collect();
    Ok(Json(json!({"model": state.model_id, "results": results})))
}

async fn features(State(state): State<Arc<AppState>>, images: Images) -> Result<Json<Value>, ApiError> {
    let outputs = infer(&state, images).await?;
    let results: Vec<Value> = outputs
        .into_iter()
        .map(|o| json!({"features": o.features}))
        .collect();
    Ok(Json(
        json!({"model": state.model_id, "dim": state.classifier.model().feature_dim(), "results": results}),
    ))
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
