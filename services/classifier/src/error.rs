//! The one place a model error becomes an answer.

use runtime::ApiError;
use vision::VisionError;

/// The status and code of a model error, about the request's image `image` when there is one.
/// The match is exhaustive, so a new kind of error is given its status here rather than
/// falling to a 500 by accident.
pub fn api_error(error: VisionError, image: Option<usize>) -> ApiError {
    let message = match image {
        Some(index) => format!("image {index}: {error}"),
        None => error.to_string(),
    };
    match error {
        VisionError::TooLarge(_) => ApiError::invalid("image_too_large", message),
        VisionError::Undecodable(_) => ApiError::invalid("invalid_image", message),
        VisionError::NoClassifier => ApiError::invalid("no_classifier", message),
        VisionError::Weights(_) | VisionError::Config(_) | VisionError::Head(_) | VisionError::Candle(_) => {
            ApiError::internal(format!("model failure: {message}"))
        }
    }
}
