//! Training a classification head on pooled features with candle-nn: AdamW, cross-entropy with
//! label smoothing, optional dropout on the features, early stopping on validation accuracy,
//! and the best epoch's weights kept. The same seed gives the same head.
//!
//! The head trains on standardised features (each feature's training mean and standard
//! deviation), which makes one learning rate fit any backbone; the standardisation is then
//! folded into the first layer, so the saved head takes the backbone's raw features.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::VisionError;

/// Feature vectors (row-major, `dim` wide) with their class indices.
#[derive(Debug, Clone, Default)]
pub struct Features {
    pub values: Vec<f32>,
    pub classes: Vec<u32>,
    pub dim: usize,
}

impl Features {
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// Each feature's mean and standard deviation (at least 1e-6) over the set.
    fn moments(&self) -> (Vec<f32>, Vec<f32>) {
        let n = self.len().max(1) as f64;
        let mut sum = vec![0f64; self.dim];
        let mut squares = vec![0f64; self.dim];
        for row in self.values.chunks(self.dim) {
            for (i, &v) in row.iter().enumerate() {
                sum[i] += f64::from(v);
                squares[i] += f64::from(v) * f64::from(v);
            }
        }
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let std = squares
            .iter()
            .zip(&mean)
            .map(|(q, m)| ((q / n - m * m).max(0.0).sqrt() as f32).max(1e-6))
            .collect();
        (mean.into_iter().map(|m| m as f32).collect(), std)
    }

    /// The set with each feature standardised by `mean` and `std`.
    fn standardised(&self, mean: &[f32], std: &[f32]) -> Self {
        let values = self
            .values
            .chunks(self.dim.max(1))
            .flat_map(|row| {
                row.iter()
                    .zip(mean.iter().zip(std))
                    .map(|(v, (m, s))| (v - m) / s)
            })
            .collect();
        Self {
            values,
            classes: self.classes.clone(),
            dim: self.dim,
        }
    }

    fn rows(&self, indices: &[usize]) -> candle_core::Result<(Tensor, Tensor)> {
        let mut values = Vec::with_capacity(indices.len() * self.dim);
        for &i in indices {
            values.extend_from_slice(&self.values[i * self.dim..(i + 1) * self.dim]);
        }
        let classes: Vec<u32> = indices.iter().map(|&i| self.classes[i]).collect();
        Ok((
            Tensor::from_vec(values, (indices.len(), self.dim), &Device::Cpu)?,
            Tensor::new(classes, &Device::Cpu)?,
        ))
    }
}

/// How the head is trained.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainSettings {
    /// Most passes over the training features.
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    /// Share of the target probability spread over all classes.
    pub label_smoothing: f64,
    /// Probability of zeroing a feature during training.
    pub dropout: f32,
    /// Units of a hidden ReLU layer; `None`: a linear head.
    pub hidden: Option<usize>,
    /// Epochs without a better validation accuracy before stopping.
    pub patience: usize,
    pub seed: u64,
}

impl Default for TrainSettings {
    fn default() -> Self {
        Self {
            epochs: 100,
            batch_size: 64,
            learning_rate: 1e-3,
            weight_decay: 1e-4,
            label_smoothing: 0.1,
            dropout: 0.2,
            hidden: None,
            patience: 15,
            seed: 0,
        }
    }
}

/// Loss (plain cross-entropy) and accuracy on the training and validation features after an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
}

/// A trained head: its tensors (the [`crate::Head`] names), every epoch, and which was kept.
#[derive(Debug)]
pub struct Trained {
    pub tensors: HashMap<String, Tensor>,
    pub history: Vec<EpochRecord>,
    pub best_epoch: usize,
}

struct Layer {
    weight: Var,
    bias: Var,
}

impl Layer {
    /// PyTorch's default initialisation: uniform in ±1/sqrt(inputs), from `rng`.
    fn new(inputs: usize, outputs: usize, rng: &mut impl Rng) -> candle_core::Result<Self> {
        let bound = 1.0 / (inputs as f32).sqrt();
        let mut uniform =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-bound..bound)).collect() };
        Ok(Self {
            weight: Var::from_vec(uniform(outputs * inputs), (outputs, inputs), &Device::Cpu)?,
            bias: Var::from_vec(uniform(outputs), outputs, &Device::Cpu)?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.weight.as_tensor().t()?)?
            .broadcast_add(self.bias.as_tensor())
    }
}

struct Network {
    hidden: Option<Layer>,
    output: Layer,
}

impl Network {
    fn logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.hidden {
            Some(hidden) => self.output.forward(&hidden.forward(x)?.relu()?),
            None => self.output.forward(x),
        }
    }

    fn vars(&self) -> Vec<Var> {
        let mut vars = vec![self.output.weight.clone(), self.output.bias.clone()];
        if let Some(hidden) = &self.hidden {
            vars.extend([hidden.weight.clone(), hidden.bias.clone()]);
        }
        vars
    }

    /// The current weights under the names [`crate::Head`] reads, with the standardisation
    /// `(x - mean) / std` folded into the first layer: `W / std` and `b - (W / std) mean`.
    fn snapshot(&self, mean: &Tensor, std: &Tensor) -> candle_core::Result<HashMap<String, Tensor>> {
        let first = self.hidden.as_ref().unwrap_or(&self.output);
        let weight = first.weight.as_tensor().broadcast_div(&std.unsqueeze(0)?)?;
        let bias = (first.bias.as_tensor() - weight.matmul(&mean.unsqueeze(1)?)?.squeeze(1)?)?;
        let mut tensors = HashMap::new();
        match &self.hidden {
            Some(_) => {
                tensors.insert("hidden.weight".into(), weight);
                tensors.insert("hidden.bias".into(), bias);
                tensors.insert("output.weight".into(), self.output.weight.as_tensor().copy()?);
                tensors.insert("output.bias".into(), self.output.bias.as_tensor().copy()?);
            }
            None => {
                tensors.insert("output.weight".into(), weight);
                tensors.insert("output.bias".into(), bias);
            }
        }
        Ok(tensors)
    }

    /// Mean cross-entropy and accuracy over a whole set, without dropout.
    fn measure(&self, set: &Features) -> candle_core::Result<(f64, f64)> {
        if set.is_empty() {
            return Ok((f64::NAN, f64::NAN));
        }
        let indices: Vec<usize> = (0..set.len()).collect();
        let (x, y) = set.rows(&indices)?;
        let logits = self.logits(&x)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &y)?.to_scalar::<f32>()?;
        let predicted = logits.argmax(D::Minus1)?;
        let correct = predicted
            .eq(&y)?
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()?;
        Ok((f64::from(loss), f64::from(correct) / set.len() as f64))
    }
}

/// Label-smoothed cross-entropy: `(1 - e) * nll + e * mean over classes of -log p`.
fn smoothed_loss(logits: &Tensor, targets: &Tensor, smoothing: f64) -> candle_core::Result<Tensor> {
    let log_probs = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let nll = candle_nn::loss::nll(&log_probs, targets)?;
    let uniform = log_probs.mean(D::Minus1)?.mean_all()?.neg()?;
    (nll * (1.0 - smoothing))? + (uniform * smoothing)?
}

/// Trains a head for `classes` classes; `on_epoch` sees each epoch's figures as they come.
pub fn train_head(
    train: &Features,
    val: &Features,
    classes: usize,
    settings: &TrainSettings,
    mut on_epoch: impl FnMut(&EpochRecord),
) -> Result<Trained, VisionError> {
    if train.is_empty() || train.dim == 0 {
        return Err(VisionError::Config("no training features".into()));
    }
    let (mean, std) = train.moments();
    let (train, val) = (&train.standardised(&mean, &std), &val.standardised(&mean, &std));
    let mean = Tensor::new(mean, &Device::Cpu)?;
    let std = Tensor::new(std, &Device::Cpu)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(settings.seed);
    let hidden = settings
        .hidden
        .map(|units| Layer::new(train.dim, units, &mut rng))
        .transpose()?;
    let output = Layer::new(settings.hidden.unwrap_or(train.dim), classes, &mut rng)?;
    let network = Network { hidden, output };
    let mut optimizer = AdamW::new(
        network.vars(),
        ParamsAdamW {
            lr: settings.learning_rate,
            weight_decay: settings.weight_decay,
            ..Default::default()
        },
    )?;
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut history = Vec::new();
    let mut best: Option<(f64, usize, HashMap<String, Tensor>)> = None;
    for epoch in 1..=settings.epochs.max(1) {
        order.shuffle(&mut rng);
        for batch in order.chunks(settings.batch_size.max(1)) {
            let (x, y) = train.rows(batch)?;
            let x = if settings.dropout > 0.0 {
                let keep = 1.0 - settings.dropout;
                let mask: Vec<f32> = (0..x.elem_count())
                    .map(|_| {
                        if rng.random::<f32>() < keep {
                            1.0 / keep
                        } else {
                            0.0
                        }
                    })
                    .collect();
                (x * Tensor::from_vec(mask, (batch.len(), train.dim), &Device::Cpu)?)?
            } else {
                x
            };
            let loss = smoothed_loss(&network.logits(&x)?, &y, settings.label_smoothing)?;
            optimizer.backward_step(&loss)?;
        }
        let (train_loss, train_accuracy) = network.measure(train)?;
        let (val_loss, val_accuracy) = network.measure(val)?;
        let record = EpochRecord {
            epoch,
            train_loss,
            train_accuracy,
            val_loss,
            val_accuracy,
        };
        on_epoch(&record);
        history.push(record);
        // Without a validation set, the training accuracy decides.
        let score = if val.is_empty() {
            train_accuracy
        } else {
            val_accuracy
        };
        match &best {
            Some((best_score, best_epoch, _)) if score <= *best_score => {
                if epoch - best_epoch >= settings.patience {
                    break;
                }
            }
            _ => best = Some((score, epoch, network.snapshot(&mean, &std)?)),
        }
    }
    let (_, best_epoch, tensors) = match best {
        Some(best) => best,
        None => (0.0, history.len(), network.snapshot(&mean, &std)?),
    };
    Ok(Trained {
        tensors,
        history,
        best_epoch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two classes a line separates: class 1 has a large first feature.
    fn separable(n: usize, seed: u64) -> Features {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut set = Features {
            dim: 4,
            ..Default::default()
        };
        for i in 0..n {
            let class = (i % 2) as u32;
            set.classes.push(class);
            set.values.push(class as f32 * 3.0 + rng.random_range(-1.0..1.0));
            set.values.extend((0..3).map(|_| rng.random_range(-1.0f32..1.0)));
        }
        set
    }

    #[test]
    fn learns_a_separable_problem_deterministically() {
        let (train, val) = (separable(200, 1), separable(60, 2));
        let settings = TrainSettings {
            epochs: 40,
            patience: 40,
            learning_rate: 0.05,
            ..Default::default()
        };
        let first = train_head(&train, &val, 2, &settings, |_| {}).unwrap();
        let best = &first.history[first.best_epoch - 1];
        assert!(best.val_accuracy >= 0.95, "{best:?}");
        assert!(first.history.last().unwrap().train_loss < first.history[0].train_loss);
        let again = train_head(&train, &val, 2, &settings, |_| {}).unwrap();
        assert_eq!(first.history, again.history);
        let hidden = TrainSettings {
            hidden: Some(8),
            ..settings
        };
        let trained = train_head(&train, &val, 2, &hidden, |_| {}).unwrap();
        assert_eq!(trained.tensors["hidden.weight"].dims(), [8, 4]);
        assert_eq!(trained.tensors["output.weight"].dims(), [2, 8]);
    }

    #[test]
    fn the_saved_head_takes_raw_features() {
        let (mut train, mut val) = (separable(200, 1), separable(60, 2));
        // Features far from zero and of very different scales, as a real backbone gives.
        for set in [&mut train, &mut val] {
            for (i, v) in set.values.iter_mut().enumerate() {
                *v = *v * (1.0 + (i % 4) as f32 * 10.0) + 50.0;
            }
        }
        for hidden in [None, Some(6)] {
            let settings = TrainSettings {
                epochs: 30,
                learning_rate: 0.05,
                hidden,
                ..Default::default()
            };
            let trained = train_head(&train, &val, 2, &settings, |_| {}).unwrap();
            let best = trained.history[trained.best_epoch - 1];
            let tensors = trained.tensors.into_iter().collect();
            let info = crate::HeadInfo {
                backbone: "test".into(),
                backbone_sha256: "sha256:0".into(),
                feature_dim: 4,
                preprocessing: crate::Preprocessing::default(),
                hidden,
                training: serde_json::Value::Null,
                figures: serde_json::Value::Null,
            };
            let head = crate::Head::from_tensors(tensors, vec!["a".into(), "b".into()], info).unwrap();
            let x = Tensor::from_vec(val.values.clone(), (val.len(), 4), &Device::Cpu).unwrap();
            let predicted: Vec<u32> = head
                .logits(&x)
                .unwrap()
                .argmax(D::Minus1)
                .unwrap()
                .to_vec1()
                .unwrap();
            let correct = predicted.iter().zip(&val.classes).filter(|(p, c)| p == c).count();
            assert_eq!(
                correct as f64 / val.len() as f64,
                best.val_accuracy,
                "hidden {hidden:?}"
            );
        }
    }

    #[test]
    fn stops_early_when_validation_stops_improving() {
        let (train, val) = (separable(200, 1), separable(60, 2));
        let settings = TrainSettings {
            epochs: 500,
            patience: 3,
            ..Default::default()
        };
        let trained = train_head(&train, &val, 2, &settings, |_| {}).unwrap();
        assert!(trained.history.len() < 500);
        assert_eq!(trained.history.len(), trained.best_epoch + 3);
    }
}
