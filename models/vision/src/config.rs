//! The weights' `config.json`: timm's format (`pretrained_cfg` holds the preprocessing), plus
//! the keys our converters add for layouts that differ from PyTorch's (`bn_eps`, `padding`,
//! `label_names`).

use serde::{Deserialize, Serialize};

use crate::ops::Padding;
use crate::VisionError;

/// How an image becomes the network's input; the fields of timm's `pretrained_cfg`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    /// `[channels, height, width]`.
    pub input_size: [usize; 3],
    /// `bicubic`, `bilinear` or `nearest`.
    #[serde(default = "default_interpolation")]
    pub interpolation: String,
    /// The crop is `crop_pct` of the resized image: resize to `input / crop_pct`, then crop.
    #[serde(default = "default_crop_pct")]
    pub crop_pct: f64,
    /// `center` (resize the shorter side, crop the centre) or `squash` (resize to the input size,
    /// ignoring the aspect ratio, as Keras pipelines do).
    #[serde(default = "default_crop_mode")]
    pub crop_mode: String,
    /// Per-channel mean and standard deviation, on pixel values scaled to [0, 1].
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

fn default_interpolation() -> String {
    "bicubic".into()
}

fn default_crop_pct() -> f64 {
    0.875
}

fn default_crop_mode() -> String {
    "center".into()
}

impl Default for Preprocessing {
    /// ImageNet defaults, as timm's `mobilenetv2_100.ra_in1k`.
    fn default() -> Self {
        Self {
            input_size: [3, 224, 224],
            interpolation: default_interpolation(),
            crop_pct: default_crop_pct(),
            crop_mode: default_crop_mode(),
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }
}

impl Preprocessing {
    /// Checks the values a request would otherwise trip over.
    pub fn validate(&self) -> Result<(), VisionError> {
        let [c, h, w] = self.input_size;
        if c != 3 || h == 0 || w == 0 || h > 4096 || w > 4096 {
            return Err(VisionError::Config(format!(
                "unsupported input_size {:?}",
                self.input_size
            )));
        }
        if !(self.crop_pct > 0.0 && self.crop_pct <= 1.0) {
            return Err(VisionError::Config(format!(
                "crop_pct {} is not in (0, 1]",
                self.crop_pct
            )));
        }
        if !["bicubic", "bilinear", "nearest"].contains(&self.interpolation.as_str()) {
            return Err(VisionError::Config(format!(
                "unsupported interpolation `{}`",
                self.interpolation
            )));
        }
        if !["center", "squash"].contains(&self.crop_mode.as_str()) {
            return Err(VisionError::Config(format!(
                "unsupported crop_mode `{}`",
                self.crop_mode
            )));
        }
        if self.std.iter().any(|s| *s <= 0.0) {
            return Err(VisionError::Config(format!(
                "std {:?} must be positive",
                self.std
            )));
        }
        Ok(())
    }
}

/// The parts of `config.json` the classifier reads.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ModelConfig {
    #[serde(default)]
    pub architecture: Option<String>,
    #[serde(default)]
    pub pretrained_cfg: Option<Preprocessing>,
    /// BatchNorm epsilon (1e-5 unless a converter says otherwise; Keras uses 1e-3).
    #[serde(default)]
    pub bn_eps: Option<f64>,
    /// Padding of the 3x3 convolutions (`symmetric` unless a converter says `tf_same`).
    #[serde(default)]
    pub padding: Option<Padding>,
    /// Class names, index by index; ImageNet's names are used when absent and there are 1000.
    #[serde(default)]
    pub label_names: Option<Vec<String>>,
}

impl ModelConfig {
    /// Parses `config.json`'s text.
    pub fn from_json(text: &str) -> Result<Self, VisionError> {
        serde_json::from_str(text).map_err(|e| VisionError::Config(e.to_string()))
    }

    /// The preprocessing, defaulting to ImageNet's.
    pub fn preprocessing(&self) -> Preprocessing {
        self.pretrained_cfg.clone().unwrap_or_default()
    }

    /// The network details the weights do not carry.
    pub fn architecture(&self) -> crate::Architecture {
        let default = crate::Architecture::default();
        crate::Architecture {
            bn_eps: self.bn_eps.unwrap_or(default.bn_eps),
            padding: self.padding.unwrap_or(default.padding),
        }
    }
}
