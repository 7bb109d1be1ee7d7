//! `textgen`: a GPT-2 text service with OpenAI's completions API (`serve`) and its
//! command-line twin (`generate`).

mod completions;
mod model;
mod routes;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use runtime::{InitPhases, Metrics, ServeArgs, ServiceContext};
use text::{GenerateOptions, Generation, SamplingParams};

use crate::model::ModelArgs;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "GPT-2 text generation: an OpenAI-compatible HTTP service and a command line"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load the model, warm it up, then answer HTTP requests until SIGTERM.
    Serve {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// Complete a prompt and print the text as it is generated.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        /// Tokens to generate.
        #[arg(long, default_value_t = 64)]
        max_tokens: usize,
        /// 0 is greedy.
        #[arg(long, default_value_t = 1.0)]
        temperature: f32,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        /// 0 keeps every token.
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        /// Same seed, same text.
        #[arg(long)]
        seed: Option<u64>,
        prompt: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mode = match cli.command {
        Command::Serve { .. } => runtime::telemetry::LogMode::Service,
        _ => runtime::telemetry::LogMode::Cli,
    };
    runtime::telemetry::init(mode);
    match cli.command {
        Command::Serve { model, serve } => serve_http(&model, &serve),
        Command::Generate {
            model,
            max_tokens,
            temperature,
            top_p,
            top_k,
            seed,
            prompt,
        } => {
            let sampling = SamplingParams {
                temperature,
                top_p,
                top_k,
                seed: seed.unwrap_or_else(rand::random),
                ..Default::default()
            };
            generate(
                &model,
                &prompt,
                GenerateOptions {
                    max_tokens,
                    sampling,
                    ..Default::default()
                },
            )
        }
    }
}

fn serve_http(args: &ModelArgs, serve: &ServeArgs) -> ExitCode {
    let mut phases = InitPhases::new();
    let (model, card) = match model::load(args, &mut phases) {
        Ok(loaded) => loaded,
        Err(e) => return runtime::startup_failure(&e),
    };
    let listener = match runtime::bind(serve, &mut phases) {
        Ok(listener) => listener,
        Err(code) => return code,
    };
    let metrics = Arc::new(Metrics::default());
    let model = Arc::new(model);
    let worker = match model::spawn_worker(model.clone(), serve.max_concurrency, metrics.clone()) {
        Ok(worker) => worker,
        Err(e) => return runtime::startup_failure(&format!("cannot start the model thread: {e}")),
    };
    let state = Arc::new(routes::AppState {
        model,
        worker,
        model_id: card.id.clone(),
    });
    let ctx = ServiceContext::new("textgen", card, phases.phases().to_vec(), metrics);
    runtime::serve(ctx, routes::routes(state), serve, listener)
}

fn generate(args: &ModelArgs, prompt: &str, options: GenerateOptions) -> ExitCode {
    let mut phases = InitPhases::new();
    let (model, _) = match model::load(args, &mut phases) {
        Ok(loaded) => loaded,
        Err(e) => return runtime::startup_failure(&e),
    };
    let context = model.gpt2.config().n_positions;
    let tokens = match model.tokenizer.encode(if prompt.is_empty() {
        text::END_OF_TEXT
    } else {
        prompt
    }) {
        Ok(tokens) if tokens.len() + options.max_tokens <= context => tokens,
        Ok(tokens) => {
            eprintln!(
                "error: {} prompt tokens + {} to generate exceed the context of {context}",
                tokens.len(),
                options.max_tokens
            );
            return ExitCode::from(runtime::EXIT_CONFIG);
        }
        Err(e) => return runtime::startup_failure(&e),
    };
    let generation = match Generation::start(&model.gpt2, &model.tokenizer, &tokens, options) {
        Ok((generation, _)) => generation,
        Err(e) => return runtime::startup_failure(&e),
    };
    let mut stdout = std::io::stdout().lock();
    let _ = write!(stdout, "{prompt}");
    for step in generation {
        match step {
            Ok(step) => {
                let _ = write!(stdout, "{}", step.text);
                let _ = stdout.flush();
            }
            Err(e) => {
                eprintln!("\nerror: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let _ = writeln!(stdout);
    ExitCode::SUCCESS
}
