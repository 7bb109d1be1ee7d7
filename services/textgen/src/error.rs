//! The one place a model error becomes an answer.

use runtime::ApiError;
use text::TextError;

/// The status and code of a model error. The match is exhaustive, so a new kind of error is
/// given its status here rather than falling to a 500 by accident.
pub fn api_error(error: TextError) -> ApiError {
    match error {
        TextError::ContextOverflow { .. } => ApiError::invalid("context_length_exceeded", error.to_string()),
        TextError::Tokenizer(_) => ApiError::invalid("invalid_value", error.to_string()),
        TextError::Weights(_) | TextError::Config(_) | TextError::Candle(_) | TextError::Step(_) => {
            ApiError::internal(format!("model failure: {error}"))
        }
    }
}

/// 422 `invalid_value`: a well-formed request with a value out of its range.
pub fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::invalid("invalid_value", message)
}
