//! Loading the classifier (each step an init phase) and running it on the model thread.

use std::sync::Arc;

use runtime::{ApiError, Arrival, ComputeArgs, DTypeArg, InitPhases, Metrics, ModelCard, ModelWorker};
use serde_json::json;
use tokio::sync::oneshot;
use vision::{DecodeLimits, Head, ImageClassifier, ImageOutput, ModelConfig, VisionError};

/// Default weights: timm's ImageNet MobileNetV2.
pub const DEFAULT_MODEL: &str = "timm/mobilenetv2_100.ra_in1k";

/// Where the weights come from and how they run; shared by every subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// A local directory (config.json + model.safetensors) or a hub repo id (owner/name[@revision]).
    #[arg(long, env = "MODEL", default_value = DEFAULT_MODEL)]
    pub model: String,

    #[command(flatten)]
    pub compute: ComputeArgs,

    /// Largest image accepted, in pixels (width x height), checked before decoding.
    #[arg(long, env = "MAX_PIXELS", default_value_t = 40_000_000)]
    pub max_pixels: u64,

    /// A head directory written by `classifier train`: answers with its classes instead of the
    /// model's own (refused unless it was trained on this very backbone).
    #[arg(long, env = "HEAD")]
    pub head: Option<std::path::PathBuf>,
}

impl ModelArgs {
    pub fn decode_limits(&self) -> DecodeLimits {
        DecodeLimits {
            max_pixels: self.max_pixels,
        }
    }
}

/// Why the classifier could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Source(#[from] hub::HubError),
    #[error("{0}")]
    Model(#[from] VisionError),
    #[error("{0}")]
    Unsupported(String),
    #[error("cannot read the weights for their checksum: {0}")]
    Checksum(#[from] std::io::Error),
}

/// Resolves, loads, builds and warms up the classifier, timing each step.
pub fn load(args: &ModelArgs, phases: &mut InitPhases) -> Result<(ImageClassifier, ModelCard), LoadError> {
    let level = args
        .compute
        .cpu_kernels(&[DTypeArg::F32])
        .map_err(LoadError::Unsupported)?;
    let source: hub::ModelSource = args.model.parse()?;
    let (config_path, weights_path) = phases.run("resolve_weights", || -> Result<_, hub::HubError> {
        Ok((source.fetch("config.json")?, source.fetch("model.safetensors")?))
    })?;
    let config = phases.run("read_config", || -> Result<ModelConfig, VisionError> {
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| VisionError::Config(format!("cannot read {}: {e}", config_path.display())))?;
        ModelConfig::from_json(&text)
    })?;
    let tensors = phases.run("load_weights", || hub::load_safetensors(&weights_path))?;
    let classifier = phases.run("build_model", || -> Result<_, VisionError> {
        let model = vision::MobileNetV2::from_tensors(&tensors, config.architecture(), level).map_err(
            |e| match e {
                VisionError::Weights(reason) => {
                    VisionError::Weights(format!("{}: {reason}", weights_path.display()))
                }
                other => other,
            },
        )?;
        ImageClassifier::new(model, &config)
    })?;
    drop(tensors);
    let classifier = match &args.head {
        Some(dir) => phases.run("load_head", || -> Result<_, LoadError> {
            let head = Head::load(dir)?;
            head.check_backbone(
                &runtime::sha256_file(&weights_path)?,
                classifier.model().feature_dim(),
            )?;
            Ok(classifier.with_head(head)?)
        })?,
        None => classifier,
    };
    phases.run("warm_up", || -> Result<(), VisionError> {
        let [_, h, w] = classifier.preprocessing().input_size;
        classifier.infer(&[vec![0.0; h * w * 3]])?;
        Ok(())
    })?;
    let pre = classifier.preprocessing();
    let card = ModelCard {
        id: source.model_name(),
        source: source.to_string(),
        device: "cpu".into(),
        dtype: args.compute.dtype.to_string(),
        kernels: level.name().into(),
        details: json!({
            "architecture": config.architecture.as_deref().unwrap_or("mobilenetv2"),
            "num_classes": classifier.labels().len(),
            "feature_dim": classifier.model().feature_dim(),
            "preprocessing": pre,
            "labels": classifier.labels(),
            "head": classifier.head().map(|head| json!({
                "dir": args.head,
                "backbone": head.info().backbone,
                "hidden": head.info().hidden,
                "figures": head.info().figures,
            })),
        }),
        weights_path,
    };
    Ok((classifier, card))
}

/// Preprocessed images waiting for the model, and where their outputs go.
pub struct Job {
    pub images: Vec<Vec<f32>>,
    pub reply: oneshot::Sender<Result<Vec<ImageOutput>, String>>,
}

/// Starts the model thread: each wake-up runs the queued jobs' images as one batch of at most
/// `max_batch_images` images (a request with more runs alone), waiting up to `batch_window`
/// for requests that are being decoded meanwhile.
pub fn spawn_worker(
    classifier: Arc<ImageClassifier>,
    capacity: usize,
    max_batch_images: usize,
    batch_window: std::time::Duration,
    metrics: Arc<Metrics>,
) -> std::io::Result<ModelWorker<Job>> {
    ModelWorker::spawn(
        "classifier-model",
        capacity,
        max_batch_images,
        batch_window,
        metrics,
        |job: &Job| job.images.len(),
        move |jobs: Vec<Job>| {
            let images: Vec<&[f32]> = jobs
                .iter()
                .flat_map(|j| j.images.iter().map(Vec::as_slice))
                .collect();
            match classifier.infer(&images) {
                Ok(mut outputs) => {
                    for job in jobs.into_iter().rev() {
                        let n = job.images.len();
                        let split = outputs.split_off(outputs.len() - n);
                        let _ = job.reply.send(Ok(split));
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    for job in jobs {
                        let _ = job.reply.send(Err(message.clone()));
                    }
                }
            }
        },
    )
}

/// Ends the request's announcement and submits its images, then waits for the model's answer.
/// The announcement ends first: the model thread, woken by this very job, must not wait for it.
pub async fn run(
    worker: &ModelWorker<Job>,
    images: Vec<Vec<f32>>,
    arrival: Arrival,
) -> Result<Vec<ImageOutput>, ApiError> {
    let (reply, answer) = oneshot::channel();
    drop(arrival);
    worker.submit(Job { images, reply })?;
    match answer.await {
        Ok(Ok(outputs)) => Ok(outputs),
        Ok(Err(e)) => Err(ApiError::internal(format!("model failure: {e}"))),
        Err(_) => Err(ApiError::internal("the model thread dropped the request")),
    }
}
