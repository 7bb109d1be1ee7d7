//! The three ways a request carries images: the raw image as the body, multipart file parts, or
//! JSON with base64 strings. Each becomes a list of encoded images plus an optional `top_k`.

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::header::CONTENT_TYPE;
use base64::Engine;
use runtime::error::excerpt;
use runtime::ApiError;
use serde::Deserialize;

/// Encoded images of one request, in order, and the `top_k` the body asked for.
#[derive(Debug, Default)]
pub struct Images {
    pub encoded: Vec<Bytes>,
    pub top_k: Option<usize>,
}

const ACCEPTED: &str = "image/jpeg, image/png, image/webp, image/gif, image/bmp, image/tiff, \
    application/octet-stream, multipart/form-data or application/json";

/// Images as JSON: base64 strings, plain or `data:` URLs.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonBody {
    /// Base64-encoded image files, plain or as `data:<type>;base64,` URLs.
    images: Vec<String>,
    /// Classes per image: 1 to the number of classes; 5 by default.
    #[serde(default)]
    #[schema(minimum = 1)]
    top_k: Option<usize>,
    /// Accepted and ignored: each service serves one model.
    #[serde(default, rename = "model")]
    #[schema(value_type = Option<String>)]
    _model: Option<serde_json::Value>,
}

impl<S: Send + Sync> FromRequest<S> for Images {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let content_type = request
            .headers()
            .get(CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or("").to_ascii_lowercase())
            .ok_or_else(|| {
                ApiError::unsupported_media_type(format!("missing Content-Type; send one of: {ACCEPTED}"))
            })?;
        let essence = content_type.split(';').next().unwrap_or("").trim().to_string();
        let images = match essence.as_str() {
            "multipart/form-data" => {
                let multipart = Multipart::from_request(request, state).await.map_err(|e| {
                    ApiError::bad_request(format!("malformed multipart body: {}", e.body_text()))
                })?;
                from_multipart(multipart).await?
            }
            "application/json" => {
                let body = body_bytes(request, state).await?;
                let parsed: JsonBody = serde_json::from_slice(&body)
                    .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
                let encoded = parsed
                    .images
                    .iter()
                    .enumerate()
                    .map(|(i, text)| {
                        decode_base64(text)
                            .map_err(|e| ApiError::invalid("invalid_base64", format!("images[{i}]: {e}")))
                    })
                    .collect::<Result<_, _>>()?;
                Images {
                    encoded,
                    top_k: parsed.top_k,
                }
            }
            t if t.starts_with("image/") || t == "application/octet-stream" => Images {
                encoded: vec![body_bytes(request, state).await?],
                top_k: None,
            },
            other => {
                return Err(ApiError::unsupported_media_type(format!(
                    "unsupported Content-Type `{other}`; send one of: {ACCEPTED}"
                )))
            }
        };
        if images.encoded.is_empty() {
            return Err(ApiError::bad_request("the request holds no image"));
        }
        if let Some(i) = images.encoded.iter().position(Bytes::is_empty) {
            return Err(ApiError::bad_request(format!("image {i} is empty (0 bytes)")));
        }
        Ok(images)
    }
}

async fn body_bytes<S: Send + Sync>(request: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(request, state)
        .await
        .map_err(|e| ApiError::from_status(e.status(), e.body_text()))
}

/// File parts are images (in order); a text field `top_k` sets `top_k`; other fields are ignored.
async fn from_multipart(mut multipart: Multipart) -> Result<Images, ApiError> {
    let mut images = Images::default();
    let malformed = |e: axum::extract::multipart::MultipartError| {
        ApiError::from_status(e.status(), format!("malformed multipart body: {}", e.body_text()))
    };
    while let Some(field) = multipart.next_field().await.map_err(malformed)? {
        let is_file = field.file_name().is_some()
            || field
                .content_type()
                .is_some_and(|t| t.starts_with("image/") || t == "application/octet-stream");
        let name = field.name().unwrap_or("").to_string();
        if is_file {
            images.encoded.push(field.bytes().await.map_err(malformed)?);
        } else if name == "top_k" {
            let text = field.text().await.map_err(malformed)?;
            let top_k = text.trim().parse().map_err(|_| {
                ApiError::invalid(
                    "invalid_top_k",
                    format!("top_k `{}` is not a non-negative integer", excerpt(&text)),
                )
            })?;
            images.top_k = Some(top_k);
        }
    }
    Ok(images)
}

/// Standard base64, with or without a `data:<type>;base64,` prefix.
pub(crate) fn decode_base64(text: &str) -> Result<Bytes, String> {
    let payload = match text.split_once(";base64,") {
        Some((prefix, payload)) if prefix.starts_with("data:") => payload,
        _ => text,
    };
    let cleaned: String = payload.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(cleaned.as_bytes())
        .map(Bytes::from)
        .map_err(|e| format!("invalid base64: {e}"))
}
