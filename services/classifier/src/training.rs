//! `classifier train` and `classifier eval`: transfer learning on a folder of labelled photos.
//!
//! Training runs the frozen backbone once over every photo (and over `--augment` random views of
//! each training photo), keeps the pooled features, trains a head on them, and writes the head
//! directory with its report and pictures. Evaluation runs backbone and head over a folder and
//! prints the figures.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rayon::prelude::*;
use serde_json::json;
use vision::dataset::stratified_split;
use vision::{
    Augmentation, Evaluation, Features, Head, HeadInfo, ImageClassifier, ImageFolder, ImageOutput, Sample,
    TrainSettings,
};

use crate::model::{self, ModelArgs};

/// Images decoded and run through the model at a time.
const BATCH: usize = 32;

/// `classifier train`'s own flags.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// One sub-folder of images per class (TensorFlow's flower_photos layout).
    #[arg(long, env = "DATA")]
    pub data: PathBuf,
    /// Where to write the head directory (created when missing).
    #[arg(long, env = "OUT")]
    pub out: PathBuf,
    /// Most epochs (training stops earlier when validation accuracy stops improving).
    #[arg(long, env = "EPOCHS", default_value_t = 100)]
    pub epochs: usize,
    /// Share of each class held out for validation.
    #[arg(long, env = "VAL_SPLIT", default_value_t = 0.2)]
    pub val_split: f64,
    /// Seeds the split, the augmentation, the initial weights and the batch order.
    #[arg(long, env = "SEED", default_value_t = 0)]
    pub seed: u64,
    /// Random views (crop, flip, colour jitter) per training photo, each its own feature vector.
    #[arg(long, env = "AUGMENT", default_value_t = 1)]
    pub augment: usize,
    /// Units of a hidden ReLU layer (default: a linear head).
    #[arg(long, env = "HIDDEN")]
    pub hidden: Option<usize>,
    #[arg(long, env = "LEARNING_RATE", default_value_t = 1e-3)]
    pub learning_rate: f64,
    /// AdamW's decoupled weight decay.
    #[arg(long, env = "WEIGHT_DECAY", default_value_t = 1e-4)]
    pub weight_decay: f64,
    #[arg(long, env = "LABEL_SMOOTHING", default_value_t = 0.1)]
    pub label_smoothing: f64,
    /// Probability of dropping each feature during training.
    #[arg(long, env = "DROPOUT", default_value_t = 0.2)]
    pub dropout: f32,
    /// Epochs without a better validation accuracy before stopping.
    #[arg(long, env = "PATIENCE", default_value_t = 15)]
    pub patience: usize,
}

impl TrainArgs {
    fn settings(&self) -> TrainSettings {
        TrainSettings {
            epochs: self.epochs,
            learning_rate: self.learning_rate,
            weight_decay: self.weight_decay,
            label_smoothing: self.label_smoothing,
            dropout: self.dropout,
            hidden: self.hidden,
            patience: self.patience,
            seed: self.seed,
            ..Default::default()
        }
    }
}

/// Prints `message` as the one error line and answers the configuration exit code.
fn fail(message: impl std::fmt::Display) -> ExitCode {
    runtime::startup_failure(&message)
}

/// Lists the data folder (first: a bad folder fails before any weights load), then loads the
/// model; a failure is reported and answered as the exit code.
fn open(
    model_args: &ModelArgs,
    data: &Path,
) -> Result<(ImageFolder, ImageClassifier, runtime::ModelCard), ExitCode> {
    let folder = ImageFolder::scan(data).map_err(fail)?;
    let (classifier, card) = model::load(model_args, &mut runtime::InitPhases::new()).map_err(fail)?;
    Ok((folder, classifier, card))
}

/// One image to run: a sample, and which random view of it (`None`: the photo as it is).
#[derive(Debug, Clone, Copy)]
struct View {
    sample: usize,
    augmented: Option<usize>,
}

/// What the model made of a set of views, in order; views whose file could not be decoded
/// are left out (`kept` says which were run) and their files listed in `skipped`.
struct Ran {
    kept: Vec<View>,
    outputs: Vec<ImageOutput>,
    skipped: Vec<(PathBuf, String)>,
    images_per_second: f64,
}

fn progress(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:<10} [{bar:40}] {pos}/{len} images, {per_sec}, eta {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

/// Decodes, augments and preprocesses the views in parallel, a batch at a time, and runs each
/// batch through the model. A view's random crop depends only on the seed, its sample and its
/// number, so the result does not depend on thread scheduling.
fn run_views(
    classifier: &ImageClassifier,
    args: &ModelArgs,
    samples: &[Sample],
    views: &[View],
    seed: u64,
    what: &str,
) -> Result<Ran, vision::VisionError> {
    let augmentation = Augmentation::default();
    let bar = progress(views.len(), what);
    let start = Instant::now();
    let mut ran = Ran {
        kept: Vec::new(),
        outputs: Vec::new(),
        skipped: Vec::new(),
        images_per_second: 0.0,
    };
    for batch in views.chunks(BATCH) {
        let prepared: Vec<(View, Result<Vec<f32>, String>)> = batch
            .par_iter()
            .map(|&view| {
                let path = &samples[view.sample].path;
                let image = std::fs::read(path).map_err(|e| e.to_string()).and_then(|bytes| {
                    vision::decode_image(&bytes, args.decode_limits()).map_err(|e| e.to_string())
                });
                let pixels = image.map(|image| match view.augmented {
                    None => classifier.preprocessing().apply(&image),
                    Some(number) => {
                        let view_seed = seed
                            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                            .wrapping_add((view.sample as u64) << 16 | number as u64);
                        let mut rng = rand::rngs::StdRng::seed_from_u64(view_seed);
                        classifier
                            .preprocessing()
                            .apply(&augmentation.view(&image, &mut rng))
                    }
                });
                (view, pixels)
            })
            .collect();
        let mut pixels = Vec::with_capacity(prepared.len());
        for (view, result) in prepared {
            match result {
                Ok(values) => {
                    ran.kept.push(view);
                    pixels.push(values);
                }
                // A file is reported once, not once per view.
                Err(e) if view.augmented.is_none() => {
                    ran.skipped.push((samples[view.sample].path.clone(), e))
                }
                Err(_) => {}
            }
        }
        if !pixels.is_empty() {
            ran.outputs.extend(classifier.infer(&pixels)?);
        }
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    ran.images_per_second = ran.kept.len() as f64 / start.elapsed().as_secs_f64().max(1e-9);
    eprintln!(
        "{what}: {} images in {:.1} s ({:.1} images/s)",
        ran.kept.len(),
        start.elapsed().as_secs_f64(),
        ran.images_per_second
    );
    if !ran.skipped.is_empty() {
        eprintln!(
            "warning: skipped {} files that are not readable images:",
            ran.skipped.len()
        );
        for (path, reason) in &ran.skipped {
            eprintln!("  {}: {reason}", path.display());
        }
    }
    Ok(ran)
}

/// The classes that kept no image after decoding, if any, as an error.
fn check_every_class_has_images(folder: &ImageFolder, ran: &Ran) -> Result<(), String> {
    let empty: Vec<&str> = (0..folder.classes.len())
        .filter(|&c| !ran.kept.iter().any(|v| folder.samples[v.sample].class == c))
        .map(|c| folder.classes[c].as_str())
        .collect();
    if empty.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "no readable images in class folder(s): {}",
            empty.join(", ")
        ))
    }
}

fn features(folder: &ImageFolder, ran: &Ran, keep: impl Fn(&View) -> bool) -> Features {
    let mut set = Features {
        dim: ran.outputs.first().map_or(0, |o| o.features.len()),
        ..Default::default()
    };
    for (view, output) in ran.kept.iter().zip(&ran.outputs) {
        if keep(view) {
            set.values.extend_from_slice(&output.features);
            set.classes.push(folder.samples[view.sample].class as u32);
        }
    }
    set
}

/// `classifier train`.
pub fn train(model_args: &ModelArgs, args: &TrainArgs) -> ExitCode {
    let started = Instant::now();
    if model_args.head.is_some() {
        return fail("train writes a new head; leave --head out");
    }
    if !(0.0..1.0).contains(&args.val_split) {
        return fail(format!("--val-split must be in [0, 1), got {}", args.val_split));
    }
    let (folder, classifier, card) = match open(model_args, &args.data) {
        Ok(opened) => opened,
        Err(code) => return code,
    };
    let backbone_sha256 = match runtime::sha256_file(&card.weights_path) {
        Ok(checksum) => checksum,
        Err(e) => return fail(format!("cannot read the backbone weights: {e}")),
    };
    let classes: Vec<usize> = folder.samples.iter().map(|s| s.class).collect();
    let (train_set, val_set) = stratified_split(&classes, args.val_split, args.seed);
    eprintln!(
        "{} classes ({}), {} photos: {} for training, {} for validation; backbone {} at {}x{}",
        folder.classes.len(),
        folder.classes.join(", "),
        folder.samples.len(),
        train_set.len(),
        val_set.len(),
        card.id,
        classifier.preprocessing().input_size[1],
        classifier.preprocessing().input_size[2],
    );
    let mut views: Vec<View> = Vec::new();
    for &sample in &train_set {
        views.push(View {
            sample,
            augmented: None,
        });
        views.extend((0..args.augment).map(|n| View {
            sample,
            augmented: Some(n),
        }));
    }
    let is_validation = {
        let mut flags = vec![false; folder.samples.len()];
        for &i in &val_set {
            flags[i] = true;
        }
        flags
    };
    views.extend(val_set.iter().map(|&sample| View {
        sample,
        augmented: None,
    }));
    let extraction = Instant::now();
    let ran = match run_views(
        &classifier,
        model_args,
        &folder.samples,
        &views,
        args.seed,
        "features",
    ) {
        Ok(ran) => ran,
        Err(e) => return fail(e),
    };
    let extraction_seconds = extraction.elapsed().as_secs_f64();
    if let Err(e) = check_every_class_has_images(&folder, &ran) {
        return fail(e);
    }
    let train_features = features(&folder, &ran, |v| !is_validation[v.sample]);
    let val_features = features(&folder, &ran, |v| is_validation[v.sample]);
    let settings = args.settings();
    let training = Instant::now();
    let trained = vision::train_head(
        &train_features,
        &val_features,
        folder.classes.len(),
        &settings,
        |r| {
            eprintln!(
                "epoch {:>3}  train loss {:.4} accuracy {:6.2}%  validation loss {:.4} accuracy {:6.2}%",
                r.epoch,
                r.train_loss,
                r.train_accuracy * 100.0,
                r.val_loss,
                r.val_accuracy * 100.0
            )
        },
    );
    let trained = match trained {
        Ok(trained) => trained,
        Err(e) => return fail(e),
    };
    let training_seconds = training.elapsed().as_secs_f64();
    let info = HeadInfo {
        backbone: model_args.model.clone(),
        backbone_sha256,
        feature_dim: train_features.dim,
        preprocessing: classifier.preprocessing().clone(),
        hidden: settings.hidden,
        training: json!({
            "settings": settings,
            "augment": args.augment,
            "augmentation": Augmentation::default(),
            "val_split": args.val_split,
            "train_features": train_features.len(),
            "validation_images": val_features.len(),
        }),
        figures: json!(null),
    };
    let mut head = match Head::from_tensors(trained.tensors, folder.classes.clone(), info) {
        Ok(head) => head,
        Err(e) => return fail(e),
    };
    // The kept head on the validation photos, through the same path serving takes.
    let validation = match evaluate_head(&head, &val_features, &folder.classes) {
        Ok(evaluation) => evaluation,
        Err(e) => return fail(e),
    };
    let wall_seconds = started.elapsed().as_secs_f64();
    head.set_figures(json!({
        "val_accuracy": validation.accuracy,
        "best_epoch": trained.best_epoch,
        "epochs_run": trained.history.len(),
        "feature_images_per_second": ran.images_per_second,
    }));
    let report = json!({
        "history": trained.history,
        "best_epoch": trained.best_epoch,
        "validation": validation,
        "skipped_files": ran.skipped.iter().map(|(p, reason)| json!({"path": p, "reason": reason})).collect::<Vec<_>>(),
        "seconds": {"feature_extraction": extraction_seconds, "training": training_seconds, "total": wall_seconds},
        "feature_images_per_second": ran.images_per_second,
    });
    let written = head
        .save(&args.out)
        .and_then(|()| vision::head::write_json(&args.out.join("report.json"), &report))
        .and_then(|()| {
            vision::plot::learning_curves(
                &trained.history,
                trained.best_epoch,
                &args.out.join("learning_curves.png"),
            )
        })
        .and_then(|()| {
            vision::plot::confusion_matrix(
                &validation,
                "validation confusion matrix",
                &args.out.join("confusion_matrix.png"),
            )
        });
    if let Err(e) = written {
        return fail(e);
    }
    println!("{}", validation.table());
    println!(
        "kept epoch {} of {}; validation accuracy {:.2}%",
        trained.best_epoch,
        trained.history.len(),
        validation.accuracy * 100.0
    );
    println!(
        "wall time {wall_seconds:.1} s (features {extraction_seconds:.1} s at {:.1} images/s, training {training_seconds:.1} s)",
        ran.images_per_second
    );
    println!("head written to {}", args.out.display());
    ExitCode::SUCCESS
}

/// The head's predictions over already-extracted features.
fn evaluate_head(head: &Head, set: &Features, labels: &[String]) -> Result<Evaluation, vision::VisionError> {
    if set.is_empty() {
        return Ok(vision::evaluate(labels, &[], &[]));
    }
    let x = candle_core::Tensor::from_slice(&set.values, (set.len(), set.dim), &candle_core::Device::Cpu)?;
    let predicted: Vec<u32> = head.logits(&x)?.argmax(candle_core::D::Minus1)?.to_vec1()?;
    Ok(vision::evaluate(labels, &set.classes, &predicted))
}

/// `classifier eval`.
pub fn eval(model_args: &ModelArgs, data: &Path, as_json: bool) -> ExitCode {
    if model_args.head.is_none() {
        return fail("eval needs --head DIR (a head written by `classifier train`)");
    }
    let (folder, classifier, card) = match open(model_args, data) {
        Ok(opened) => opened,
        Err(code) => return code,
    };
    let labels = classifier.labels().to_vec();
    // Each folder's class is the head's label of the same name.
    let mut class_of_folder = Vec::new();
    for name in &folder.classes {
        match labels.iter().position(|l| l == name) {
            Some(index) => class_of_folder.push(index as u32),
            None => {
                return fail(format!(
                    "folder `{name}` is not one of the head's classes ({})",
                    labels.join(", ")
                ))
            }
        }
    }
    let views: Vec<View> = (0..folder.samples.len())
        .map(|sample| View {
            sample,
            augmented: None,
        })
        .collect();
    let ran = match run_views(&classifier, model_args, &folder.samples, &views, 0, "evaluating") {
        Ok(ran) => ran,
        Err(e) => return fail(e),
    };
    if ran.kept.is_empty() {
        return fail(format!("no readable images under {}", data.display()));
    }
    let truth: Vec<u32> = ran
        .kept
        .iter()
        .map(|v| class_of_folder[folder.samples[v.sample].class])
        .collect();
    let predicted: Vec<u32> = ran.outputs.iter().map(|o| argmax(&o.probabilities)).collect();
    let evaluation = vision::evaluate(&labels, &truth, &predicted);
    if as_json {
        let mut answer = json!(evaluation);
        answer["model"] = json!(card.id);
        answer["head"] = json!(model_args.head);
        answer["skipped_files"] = json!(ran.skipped.iter().map(|(p, _)| p).collect::<Vec<_>>());
        println!("{answer}");
    } else {
        print!("{}", evaluation.table());
    }
    ExitCode::SUCCESS
}

fn argmax(values: &[f32]) -> u32 {
    values
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i as u32)
}
