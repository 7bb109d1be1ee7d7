//! MobileNetV2 image classification in candle, with no HTTP in it: the network and its CPU
//! kernels, the weights' configuration, image decoding and preprocessing, label names, and
//! transfer learning (data folders, augmentation, head training, evaluation, pictures).

pub mod augment;
pub mod config;
pub mod dataset;
mod depthwise;
pub mod evaluate;
mod fused;
pub mod head;
pub mod image_input;
pub mod mobilenetv2;
pub mod ops;
pub mod pipeline;
pub mod plot;
pub mod resample;
pub mod train;

#[cfg(test)]
mod test_values {
    /// Deterministic values in [-1, 1) (a linear congruential generator).
    pub fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The largest absolute difference between two tensors of the same shape.
    pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }
}

pub use augment::Augmentation;
pub use config::{ModelConfig, Preprocessing};
pub use dataset::{DatasetError, ImageFolder, Sample};
pub use evaluate::{evaluate, Evaluation};
pub use head::{Head, HeadInfo};
pub use image_input::{decode_image, DecodeLimits};
pub use mobilenetv2::{Architecture, MobileNetV2};
pub use pipeline::{ImageClassifier, ImageOutput, Prediction};
pub use train::{train_head, EpochRecord, Features, TrainSettings, Trained};

/// Everything that can go wrong between bytes on disk or on the wire and logits.
#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    /// The weights or their configuration are unusable (a start-up error).
    #[error("invalid weights: {0}")]
    Weights(String),
    #[error("invalid config.json: {0}")]
    Config(String),
    /// A head directory is unusable, or belongs to another backbone.
    #[error("head: {0}")]
    Head(String),
    /// The model has no classifier, so it can only answer features.
    #[error("the model has no classifier: only features are available")]
    NoClassifier,
    /// The image is larger than the configured limit; checked before any pixel is decoded.
    #[error("image too large: {0}")]
    TooLarge(String),
    /// The bytes are not an image in a supported format, or are corrupt.
    #[error("cannot decode image: {0}")]
    Undecodable(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
