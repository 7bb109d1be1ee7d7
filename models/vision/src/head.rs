//! A classification head trained on a frozen backbone's pooled features: one linear layer, or a
//! hidden ReLU layer and then a linear one. Saved as a directory that says what it was trained on
//! (`head.safetensors`, `labels.json`, `head.json`), so that serving it on another backbone can be
//! refused.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Preprocessing;
use crate::VisionError;

/// `head.json`: what the head was trained on and how, and how well it did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadInfo {
    /// The backbone's model id or directory, as given to `train`.
    pub backbone: String,
    /// `sha256:<hex>` of the backbone's `model.safetensors`.
    pub backbone_sha256: String,
    /// Width of the backbone's pooled features.
    pub feature_dim: usize,
    /// The backbone's preprocessing (input size, resize, crop, mean, std).
    pub preprocessing: Preprocessing,
    /// Units of the hidden layer; `None` for a linear head.
    pub hidden: Option<usize>,
    /// The training settings, as the trainer reports them.
    pub training: Value,
    /// Evaluation figures on the validation split.
    pub figures: Value,
}

#[derive(Debug, Clone)]
struct Dense {
    /// (out, in), PyTorch's layout.
    weight: Tensor,
    bias: Tensor,
}

impl Dense {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)
    }
}

/// The head's layers, its class names and its `head.json`.
#[derive(Debug, Clone)]
pub struct Head {
    hidden: Option<Dense>,
    output: Dense,
    labels: Vec<String>,
    info: HeadInfo,
}

const FILES: [&str; 3] = ["head.safetensors", "labels.json", "head.json"];

impl Head {
    /// Builds a head from its tensors: `output.weight` (classes, in), `output.bias`, and for a
    /// hidden layer `hidden.weight` (units, features) and `hidden.bias`.
    pub fn from_tensors(
        mut tensors: HashMap<String, Tensor>,
        labels: Vec<String>,
        info: HeadInfo,
    ) -> Result<Self, VisionError> {
        let mut take = |name: &str| {
            tensors
                .remove(name)
                .ok_or_else(|| VisionError::Head(format!("head.safetensors has no `{name}`")))
        };
        let hidden = match info.hidden {
            Some(_) => Some(Dense {
                weight: take("hidden.weight")?,
                bias: take("hidden.bias")?,
            }),
            None => None,
        };
        let output = Dense {
            weight: take("output.weight")?,
            bias: take("output.bias")?,
        };
        let inputs = hidden.as_ref().map_or(info.feature_dim, |h| h.bias.dims()[0]);
        if let Some(h) = &hidden {
            if h.weight.dims() != [h.bias.dims()[0], info.feature_dim] {
                return Err(VisionError::Head(format!(
                    "hidden.weight is {:?}, expected [units, {}]",
                    h.weight.dims(),
                    info.feature_dim
                )));
            }
        }
        if output.weight.dims() != [labels.len(), inputs] || output.bias.dims() != [labels.len()] {
            return Err(VisionError::Head(format!(
                "output.weight is {:?} for {} labels and {inputs} inputs",
                output.weight.dims(),
                labels.len()
            )));
        }
        Ok(Self {
            hidden,
            output,
            labels,
            info,
        })
    }

    /// Reads a head directory.
    pub fn load(dir: &Path) -> Result<Self, VisionError> {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .map_err(|e| VisionError::Head(format!("cannot read {}: {e}", dir.join(name).display())))
        };
        let labels: Vec<String> = serde_json::from_str(&read("labels.json")?)
            .map_err(|e| VisionError::Head(format!("labels.json: {e}")))?;
        let info: HeadInfo = serde_json::from_str(&read("head.json")?)
            .map_err(|e| VisionError::Head(format!("head.json: {e}")))?;
        let path = dir.join(FILES[0]);
        let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
            .map_err(|e| VisionError::Head(format!("{}: {e}", path.display())))?;
        Self::from_tensors(tensors.into_iter().collect(), labels, info)
    }

    /// Writes the head directory (created when missing).
    pub fn save(&self, dir: &Path) -> Result<(), VisionError> {
        let io = |e: std::io::Error| VisionError::Head(format!("cannot write to {}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut tensors = HashMap::new();
        if let Some(hidden) = &self.hidden {
            tensors.insert("hidden.weight".to_string(), hidden.weight.clone());
            tensors.insert("hidden.bias".to_string(), hidden.bias.clone());
        }
        tensors.insert("output.weight".to_string(), self.output.weight.clone());
        tensors.insert("output.bias".to_string(), self.output.bias.clone());
        candle_core::safetensors::save(&tensors, dir.join(FILES[0]))?;
        write_json(&dir.join(FILES[1]), &self.labels)?;
        write_json(&dir.join(FILES[2]), &self.info)
    }

    /// Class logits of pooled features (batch, feature_dim).
    pub fn logits(&self, features: &Tensor) -> candle_core::Result<Tensor> {
        let x = match &self.hidden {
            Some(hidden) => hidden.forward(features)?.relu()?,
            None => features.clone(),
        };
        self.output.forward(&x)
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    pub fn info(&self) -> &HeadInfo {
        &self.info
    }

    /// Records evaluation figures in `head.json` (known only once the head exists).
    pub fn set_figures(&mut self, figures: Value) {
        self.info.figures = figures;
    }

    /// Refuses a backbone other than the one the head was trained on.
    pub fn check_backbone(&self, sha256: &str, feature_dim: usize) -> Result<(), VisionError> {
        if sha256 != self.info.backbone_sha256 || feature_dim != self.info.feature_dim {
            return Err(VisionError::Head(format!(
                "this head was trained on backbone `{}` ({}, {} features); the model loaded is {sha256} with {feature_dim} features. Serve it with --model pointing at that backbone",
                self.info.backbone, self.info.backbone_sha256, self.info.feature_dim
            )));
        }
        Ok(())
    }
}

/// Writes `value` as pretty JSON, ending with a newline.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), VisionError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| VisionError::Head(e.to_string()))?;
    std::fs::write(path, text + "\n")
        .map_err(|e| VisionError::Head(format!("cannot write {}: {e}", path.display())))
}
