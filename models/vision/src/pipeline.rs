//! A ready-to-use classifier: the network, its preprocessing and its label names.

use std::path::Path;

use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::config::{ModelConfig, Preprocessing};
use crate::head::Head;
use crate::mobilenetv2::MobileNetV2;
use crate::VisionError;

/// ImageNet-1k class names, index by index (from torchvision's weight metadata).
const IMAGENET_LABELS: &str = include_str!("../data/imagenet_labels.json");

/// One class of an answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Prediction {
    pub label: String,
    pub index: usize,
    pub score: f32,
}

/// What the network says about one image.
#[derive(Debug, Clone)]
pub struct ImageOutput {
    /// The backbone's pooled feature vector.
    pub features: Vec<f32>,
    /// Class probabilities; empty when the model has no classifier.
    pub probabilities: Vec<f32>,
}

/// MobileNetV2 with the preprocessing and labels its weights came with, or with a trained
/// head (and its labels) in place of its own classifier.
#[derive(Debug)]
pub struct ImageClassifier {
    model: MobileNetV2,
    preprocessing: Preprocessing,
    labels: Vec<String>,
    head: Option<Head>,
}

impl ImageClassifier {
    /// Loads `config.json` and `model.safetensors` (timm layout).
    pub fn load(config_path: &Path, weights_path: &Path) -> Result<Self, VisionError> {
        let text = std::fs::read_to_string(config_path)
            .map_err(|e| VisionError::Config(format!("cannot read {}: {e}", config_path.display())))?;
        let config = ModelConfig::from_json(&text)?;
        let tensors = hub::load_safetensors(weights_path).map_err(|e| VisionError::Weights(e.to_string()))?;
        let model = MobileNetV2::from_tensors(&tensors, config.architecture(), simd::level())?;
        Self::new(model, &config)
    }

    /// Combines a built network with its configuration.
    pub fn new(model: MobileNetV2, config: &ModelConfig) -> Result<Self, VisionError> {
        let preprocessing = config.preprocessing();
        preprocessing.validate()?;
        let classes = model.num_classes().unwrap_or(0);
        let labels = match &config.label_names {
            Some(names) if names.len() == classes => names.clone(),
            Some(names) => {
                return Err(VisionError::Config(format!(
                    "{} label_names for a classifier of {classes} classes",
                    names.len()
                )))
            }
            None if classes == 1000 => serde_json::from_str(IMAGENET_LABELS)
                .map_err(|e| VisionError::Config(format!("bundled ImageNet labels: {e}")))?,
            None => (0..classes).map(|i| format!("class_{i}")).collect(),
        };
        Ok(Self {
            model,
            preprocessing,
            labels,
            head: None,
        })
    }

    /// Answers with `head`'s classes instead of the model's own classifier. The caller has
    /// checked that the head was trained on this backbone ([`Head::check_backbone`]).
    pub fn with_head(mut self, head: Head) -> Result<Self, VisionError> {
        if head.info().feature_dim != self.model.feature_dim() {
            return Err(VisionError::Head(format!(
                "the head takes {} features; this backbone gives {}",
                head.info().feature_dim,
                self.model.feature_dim()
            )));
        }
        self.labels = head.labels().to_vec();
        self.head = Some(head);
        Ok(self)
    }

    pub fn head(&self) -> Option<&Head> {
        self.head.as_ref()
    }

    pub fn model(&self) -> &MobileNetV2 {
        &self.model
    }

    pub fn preprocessing(&self) -> &Preprocessing {
        &self.preprocessing
    }

    /// Class names, index by index (empty when the model has no classifier).
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Stacks preprocessed images (each from [`Preprocessing::apply`]) into one NHWC batch.
    pub fn batch<I: AsRef<[f32]>>(&self, images: &[I]) -> Result<Tensor, VisionError> {
        let [_, h, w] = self.preprocessing.input_size;
        let mut flat = Vec::with_capacity(images.len() * h * w * 3);
        for image in images {
            let image = image.as_ref();
            if image.len() != h * w * 3 {
                return Err(VisionError::Config(format!(
                    "an input of {} values is not {h}x{w}x3",
                    image.len()
                )));
            }
            flat.extend_from_slice(image);
        }
        Ok(Tensor::from_vec(flat, (images.len(), h, w, 3), &Device::Cpu)?)
    }

    /// Runs the network once over a batch: pooled features and, when there is a head or the
    /// model has a classifier, class probabilities (softmax of the logits), one entry per image.
    pub fn infer<I: AsRef<[f32]>>(&self, images: &[I]) -> Result<Vec<ImageOutput>, VisionError> {
        let (features, logits) = self.model.features_then(&self.batch(images)?, |features| {
            let logits = match (&self.head, self.model.num_classes()) {
                (Some(head), _) => Some(head.logits(features)?),
                (None, Some(_)) => Some(self.model.classify_features(features)?),
                (None, None) => None,
            };
            Ok::<_, VisionError>((features.clone(), logits))
        })??;
        let probabilities = match logits {
            Some(logits) => logits
                .to_vec2::<f32>()?
                .iter()
                .map(|row| simd::softmax(row))
                .collect(),
            None => vec![Vec::new(); images.len()],
        };
        Ok(features
            .to_vec2()?
            .into_iter()
            .zip(probabilities)
            .map(|(features, probabilities)| ImageOutput {
                features,
                probabilities,
            })
            .collect())
    }

    /// The `k` most probable classes, best first.
    pub fn top_k(&self, probabilities: &[f32], k: usize) -> Vec<Prediction> {
        most_probable(probabilities, k)
            .into_iter()
            .map(|index| Prediction {
                label: self
                    .labels
                    .get(index)
                    .cloned()
                    .unwrap_or_else(|| format!("class_{index}")),
                index,
                score: probabilities[index],
            })
            .collect()
    }
}

/// The indices of the `k` highest values, highest first, ties by index. That is a total order,
/// so selecting the first `k` and sorting only those gives what sorting all of them would.
fn most_probable(probabilities: &[f32], k: usize) -> Vec<usize> {
    let by_score = |a: &usize, b: &usize| probabilities[*b].total_cmp(&probabilities[*a]).then(a.cmp(b));
    let mut order: Vec<usize> = (0..probabilities.len()).collect();
    if k < order.len() {
        order.select_nth_unstable_by(k, by_score);
        order.truncate(k);
    }
    order.sort_by(by_score);
    order
}

#[cfg(test)]
mod tests {
    use super::most_probable;

    #[test]
    fn the_k_most_probable_are_those_a_full_sort_puts_first() {
        let probabilities = [0.1, 0.3, 0.05, 0.3, 0.2, 0.0, 0.05];
        let sorted = [1, 3, 4, 0, 2, 6, 5];
        for k in 0..=probabilities.len() + 1 {
            assert_eq!(
                most_probable(&probabilities, k),
                sorted[..k.min(sorted.len())],
                "k = {k}"
            );
        }
    }
}
