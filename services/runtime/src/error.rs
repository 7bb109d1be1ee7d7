//! The one error type of the HTTP layer, and the one place it becomes a status and a JSON body.

use crate::openapi::{ErrorBody, ErrorDetail, OpenInferenceError};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// Longest error message answered, in characters.
pub const MAX_MESSAGE_CHARS: usize = 1024;

/// Characters of a client's value quoted back in an error message.
const EXCERPT_CHARS: usize = 64;

/// A client's value as an error message quotes it: its first characters, marked when cut.
pub fn excerpt(value: &str) -> String {
    let head = prefix(value, EXCERPT_CHARS);
    if head.len() == value.len() {
        head.to_string()
    } else {
        format!("{head}…")
    }
}

/// The first `chars` characters of `text`.
fn prefix(text: &str, chars: usize) -> &str {
    text.char_indices().nth(chars).map_or(text, |(i, _)| &text[..i])
}

/// An error answered to a client, OpenAI style:
/// `{"error": {"message": "...", "type": "...", "code": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    /// A stable machine-readable reason, such as `invalid_image` or `overloaded`.
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    /// An error; a message longer than [`MAX_MESSAGE_CHARS`] (one that quotes a huge input,
    /// as a JSON parser's may) keeps its start and its end, which says where the input broke.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        let message = message.into();
        let message = match message.char_indices().nth(MAX_MESSAGE_CHARS) {
            None => message,
            Some(_) => {
                let head = prefix(&message, MAX_MESSAGE_CHARS / 2);
                let tail_chars = MAX_MESSAGE_CHARS / 4;
                let tail_start = message
                    .char_indices()
                    .rev()
                    .nth(tail_chars - 1)
                    .map_or(0, |(i, _)| i);
                format!("{head} […] {}", &message[tail_start..])
            }
        };
        Self {
            status,
            code,
            message,
        }
    }

    /// An error with the usual `code` for its status (`payload_too_large` for 413...).
    pub fn from_status(status: StatusCode, message: impl Into<String>) -> Self {
        let code = match status {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::UNAUTHORIZED => "invalid_api_key",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::REQUEST_TIMEOUT => "request_timeout",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::UNPROCESSABLE_ENTITY => "invalid_request",
            StatusCode::TOO_MANY_REQUESTS => "overloaded",
            s if s.is_server_error() => "internal_error",
            _ => "error",
        };
        Self::new(status, code, message)
    }

    /// 400: the request cannot be parsed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 415: the body is in a media type the route does not take.
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        )
    }

    /// 422: a well-formed request with invalid values.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// 429: over capacity; the client should retry shortly.
    pub fn overloaded(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "overloaded", message)
    }

    /// 503: the service cannot answer now (shutting down, timed out, worker gone).
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    /// 500: a bug; the process carries on.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }

    /// The JSON body the error is answered with.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.message.clone(),
                kind: self.kind(),
                code: self.code,
            },
        }
    }

    /// The body KServe's Open Inference Protocol answers errors with, under `/v2/`.
    pub fn open_inference_body(&self) -> OpenInferenceError {
        OpenInferenceError {
            error: self.message.clone(),
        }
    }

    /// OpenAI's error `type` for a status.
    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        // Kept with the response, so that a protocol with its own error shape can answer the
        // same error in that shape without parsing the body back.
        response.extensions_mut().insert(self.clone());
        if matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
