//! `classifier`: a MobileNetV2 image classification service (`serve`), its command-line twin
//! (`predict`), and transfer learning (`train`, `eval`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use axum::Router;
use clap::{Parser, Subcommand};
use runtime::{InitPhases, Metrics, ModelCard, ServeArgs};
use serde_json::json;

use classifier::model::{self, ModelArgs};
use classifier::{open_inference, routes, training};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "MobileNetV2 image classification: an HTTP service and a command line"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Exit 0 when the server on this machine is ready (a container health check).
    Probe(runtime::ProbeArgs),
    /// Load the model, warm it up, then answer HTTP requests until SIGTERM.
    Serve {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        serve: ServeArgs,
        /// Most images in one model batch (queued requests are batched together; one request
        /// with more images runs as a batch of its own).
        #[arg(long, env = "MAX_BATCH", default_value_t = 32)]
        max_batch: usize,
        /// Most images one request may carry.
        #[arg(long, env = "MAX_IMAGES_PER_REQUEST", default_value_t = 64)]
        max_images: usize,
        /// Milliseconds the model thread waits, after a request arrives, for requests still
        /// being decoded to batch with it (0: only what is already queued). A lone request
        /// never waits.
        #[arg(long, env = "BATCH_WINDOW_MS", default_value_t = 2.0)]
        batch_window_ms: f64,
    },
    /// Classify image files and print the top classes.
    Predict {
        #[command(flatten)]
        model: ModelArgs,
        /// How many classes to print per image.
        #[arg(long, env = "TOP_K", default_value_t = 5)]
        top_k: usize,
        /// One JSON object per image instead of text.
        #[arg(long)]
        json: bool,
        /// Image files, or folders: every file under a folder, in name order (sub-folders too, as
        /// in `flower_photos/`); a file there that is not an image is reported and skipped.
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Train a classification head on a folder of labelled photos (one sub-folder per class)
    /// over the frozen backbone, and write the head directory with its report and pictures.
    Train {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        train: training::TrainArgs,
    },
    /// Evaluate a head on a folder of labelled photos: accuracy, per-class figures, confusion.
    Eval {
        #[command(flatten)]
        model: ModelArgs,
        /// One sub-folder of images per class, named as the head's classes.
        #[arg(long, env = "DATA")]
        data: PathBuf,
        /// One JSON object instead of tables.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli: Cli = runtime::start(|cli: &Cli| matches!(cli.command, Command::Serve { .. }));
    match cli.command {
        Command::Probe(probe) => runtime::probe::run(&probe),
        Command::Serve {
            model,
            serve,
            max_batch,
            max_images,
            batch_window_ms,
        } => serve_http(&model, &serve, max_batch, max_images, batch_window_ms),
        Command::Predict {
            model,
            top_k,
            json,
            images,
        } => predict(&model, top_k, json, &images),
        Command::Train { model, train } => training::train(&model, &train),
        Command::Eval { model, data, json } => training::eval(&model, &data, json),
    }
}

/// The classifier in the shared `serve` sequence.
struct Classifier<'a> {
    model: &'a ModelArgs,
    max_batch: usize,
    max_images: usize,
    batch_window: std::time::Duration,
}

impl runtime::Service for Classifier<'_> {
    const NAME: &'static str = "classifier";
    const PLAYGROUND: &'static str = include_str!("playground.html");
    type Model = vision::ImageClassifier;
    type Error = model::LoadError;

    fn load(&self, phases: &mut InitPhases) -> Result<(Self::Model, ModelCard), Self::Error> {
        model::load(self.model, phases)
    }

    fn openapi() -> utoipa::openapi::OpenApi {
        use utoipa::OpenApi;
        let mut doc = routes::Routes::openapi().merge_from(open_inference::Routes::openapi());
        runtime::openapi::alias(&mut doc, "/v1/classify", &["/", "/invocations"]);
        doc
    }

    fn routes(
        self,
        classifier: Self::Model,
        card: &ModelCard,
        metrics: Arc<Metrics>,
        serve: &ServeArgs,
    ) -> Result<Router, String> {
        let classifier = Arc::new(classifier);
        let worker = model::spawn_worker(
            classifier.clone(),
            serve.max_concurrency,
            self.max_batch,
            self.batch_window,
            metrics,
        )
        .map_err(|e| format!("cannot start the model thread: {e}"))?;
        let state = Arc::new(routes::AppState {
            classifier,
            worker,
            model_id: card.id.clone(),
            limits: self.model.decode_limits(),
            max_images: self.max_images,
        });
        Ok(routes::routes(state.clone()).merge(open_inference::routes(state)))
    }
}

fn serve_http(
    model: &ModelArgs,
    serve: &ServeArgs,
    max_batch: usize,
    max_images: usize,
    batch_window_ms: f64,
) -> ExitCode {
    let Ok(batch_window) = std::time::Duration::try_from_secs_f64(batch_window_ms / 1e3) else {
        return runtime::startup_failure(&format!("--batch-window-ms {batch_window_ms} is not a duration"));
    };
    let classifier = Classifier {
        model,
        max_batch,
        max_images,
        batch_window,
    };
    runtime::service::serve(classifier, serve)
}

/// The files `predict` reads, each with whether it was named on the command line (a named file
/// that fails fails the command; one found in a folder is reported and skipped).
fn predict_inputs(paths: &[PathBuf]) -> Result<Vec<(PathBuf, bool)>, String> {
    let mut inputs = Vec::new();
    for path in paths {
        if path.is_dir() {
            let files = vision::dataset::files_under(path).map_err(|e| e.to_string())?;
            inputs.extend(files.into_iter().map(|file| (file, false)));
        } else {
            inputs.push((path.clone(), true));
        }
    }
    Ok(inputs)
}

fn predict(args: &ModelArgs, top_k: usize, as_json: bool, paths: &[PathBuf]) -> ExitCode {
    let inputs = match predict_inputs(paths) {
        Ok(inputs) => inputs,
        Err(e) => return runtime::startup_failure(&e),
    };
    let mut phases = InitPhases::new();
    let (classifier, card) = match model::load(args, &mut phases) {
        Ok(loaded) => loaded,
        Err(e) => return runtime::startup_failure(&e),
    };
    let top_k = top_k.clamp(1, classifier.labels().len().max(1));
    let (mut failed, mut classified) = (false, 0usize);
    for (path, named) in &inputs {
        let outcome = std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| vision::decode_image(&bytes, args.decode_limits()).map_err(|e| e.to_string()))
            .and_then(|image| {
                let pixels = classifier.preprocessing().apply(&image);
                classifier.infer(&[pixels]).map_err(|e| e.to_string())
            });
        match outcome {
            Ok(outputs) => {
                classified += 1;
                let predictions = classifier.top_k(&outputs[0].probabilities, top_k);
                if as_json {
                    println!(
                        "{}",
                        json!({"image": path, "model": card.id, "predictions": predictions})
                    );
                } else {
                    let text: Vec<String> = predictions
                        .iter()
                        .map(|p| format!("{} {:.4}", p.label, p.score))
                        .collect();
                    println!("{}: {}", path.display(), text.join(", "));
                }
            }
            Err(e) if *named => {
                failed = true;
                eprintln!("error: {}: {e}", path.display());
            }
            Err(e) => eprintln!("skipped: {}: {e}", path.display()),
        }
    }
    if classified == 0 && !failed {
        eprintln!("error: no image found in {}", join_paths(paths));
    }
    if failed || classified == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn join_paths(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    names.join(", ")
}
