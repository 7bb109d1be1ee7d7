//! Cold start of a service, the way a FaaS platform pays for it: start the binary N times, each
//! a fresh process, and time process start to port open and process start to the first
//! successful answer (a real image, or a one-token completion); read the service's own init
//! phases from `/v1/models`. With `--reference-python`, time the PyTorch stack doing the same
//! (`scripts/reference/cold_start.py`: import, load the same weights, answer once) in the same
//! run, and print the ratio.
//!
//!     cargo build --release -p classifier -p textgen -p benches
//!     target/release/cold-start --binary target/release/classifier --model DIR --image photo.jpg
//!     target/release/cold-start --binary target/release/textgen --model DIR --reference-python /tmp/ref/bin/python

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    /// The service binary: target/release/classifier or target/release/textgen.
    #[arg(long)]
    binary: PathBuf,
    /// The model directory both the service and the reference load.
    #[arg(long)]
    model: PathBuf,
    /// Fresh processes to start.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// The image of the classifier's first request.
    #[arg(long)]
    image: Option<PathBuf>,
    /// The prompt of textgen's first request (one token is generated).
    #[arg(long, default_value = "Hello, my name is")]
    prompt: String,
    /// A Python with torch and timm / transformers: times the reference stack in the same run.
    #[arg(long, env = "REFERENCE_PYTHON")]
    reference_python: Option<PathBuf>,
    /// Fresh reference processes (default: --runs).
    #[arg(long)]
    reference_runs: Option<usize>,
    /// Untimed runs of each side first, so that both start from a warm page cache (a FaaS
    /// platform's warm host); 0 times the very first start too.
    #[arg(long, default_value_t = 1)]
    warm_up: usize,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Service {
    Classifier,
    Textgen,
}

impl Service {
    fn of(binary: &Path) -> anyhow::Result<Self> {
        let name = binary
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match () {
            _ if name.starts_with("classifier") => Ok(Self::Classifier),
            _ if name.starts_with("textgen") => Ok(Self::Textgen),
            _ => bail!("--binary must be the classifier or the textgen binary, not {name}"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Classifier => "classifier",
            Self::Textgen => "textgen",
        }
    }
}

/// Milliseconds of each run, by what was measured, in the order first measured.
#[derive(Default)]
struct Samples(Vec<(String, Vec<f64>)>);

impl Samples {
    fn push(&mut self, name: &str, value: f64) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some((_, values)) => values.push(value),
            None => self.0.push((name.to_string(), vec![value])),
        }
    }

    fn extend(&mut self, other: Samples) {
        for (name, values) in other.0 {
            for value in values {
                self.push(&name, value);
            }
        }
    }

    fn get(&self, name: &str) -> Option<&[f64]> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// The first request: what a user's first call would be.
fn first_request(service: Service, base: &str, args: &Args, image: &[u8]) -> anyhow::Result<()> {
    let answer = match service {
        Service::Classifier => ureq::post(&format!("{base}/v1/classify"))
            .set("Content-Type", "application/octet-stream")
            .send_bytes(image),
        Service::Textgen => ureq::post(&format!("{base}/v1/completions"))
            .send_json(json!({"prompt": args.prompt, "max_tokens": 1, "temperature": 0})),
    }
    .context("first request failed")?;
    if answer.status() != 200 {
        bail!("first request answered {}", answer.status());
    }
    answer.into_string()?;
    Ok(())
}

/// One fresh service process: start to port open, start to first answer, and its init phases.
fn run_service(service: Service, args: &Args, image: &[u8], samples: &mut Samples) -> anyhow::Result<()> {
    let port = free_port()?;
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    let mut child = Command::new(&args.binary)
        .args(["serve", "--host", "127.0.0.1", "--port", &port.to_string()])
        .arg("--model")
        .arg(&args.model)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", args.binary.display()))?;
    let outcome = (|| -> anyhow::Result<()> {
        while TcpStream::connect(address).is_err() {
            if let Some(status) = child.try_wait()? {
                bail!("{} exited with {status} before listening", args.binary.display());
            }
            if start.elapsed() > Duration::from_secs(120) {
                bail!("no open port after 120 s");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let port_open = ms(start.elapsed());
        let base = format!("http://{address}");
        first_request(service, &base, args, image)?;
        let first_answer = ms(start.elapsed());
        samples.push("start to port open", port_open);
        samples.push("start to first answer", first_answer);
        let card: Value = ureq::get(&format!("{base}/v1/models")).call()?.into_json()?;
        for phase in card["data"][0]["init_phases"].as_array().into_iter().flatten() {
            let name = format!("init phase {}", phase["name"].as_str().unwrap_or("?"));
            samples.push(&name, phase["duration_ms"].as_f64().unwrap_or(f64::NAN));
        }
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    outcome
}

/// One fresh reference process: its own phases, and start to its answer as seen from here.
fn run_reference(service: Service, python: &Path, args: &Args, samples: &mut Samples) -> anyhow::Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/reference/cold_start.py");
    let item = match service {
        Service::Classifier => args.image.clone().unwrap_or_default().into_os_string(),
        Service::Textgen => args.prompt.clone().into(),
    };
    let start = Instant::now();
    let mut child = Command::new(python)
        .arg(&script)
        .arg(service.name())
        .arg(&args.model)
        .arg(item)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", python.display()))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;
    let first_answer = ms(start.elapsed());
    let status = child.wait()?;
    if line.is_empty() || !status.success() {
        bail!("the reference failed ({status}); run scripts/reference/cold_start.py by hand to see why");
    }
    let report: Value = serde_json::from_str(&line)?;
    samples.push("start to first answer", first_answer);
    for (name, seconds) in report["seconds"].as_object().into_iter().flatten() {
        samples.push(
            &format!("in process: {name}"),
            seconds.as_f64().unwrap_or(f64::NAN) * 1e3,
        );
    }
    Ok(())
}

/// (min, median, max).
fn summary(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = if sorted.len() % 2 == 1 {
        sorted[sorted.len() / 2]
    } else {
        (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
    };
    (sorted[0], median, sorted[sorted.len() - 1])
}

fn to_json(samples: &Samples) -> Value {
    samples
        .0
        .iter()
        .map(|(name, values)| {
            let (min, median, max) = summary(values);
            (
                name.clone(),
                json!({"min_ms": min, "median_ms": median, "max_ms": max, "runs": values.len()}),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn print_table(title: &str, samples: &Samples) {
    println!("{title}");
    println!("  {:<36} {:>10} {:>10} {:>10}", "ms", "min", "median", "max");
    for (name, values) in &samples.0 {
        let (min, median, max) = summary(values);
        println!("  {name:<36} {min:>10.1} {median:>10.1} {max:>10.1}");
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let service = Service::of(&args.binary)?;
    let image = match (service, &args.image) {
        (Service::Classifier, Some(path)) => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        (Service::Classifier, None) => bail!("the classifier's first request needs --image"),
        (Service::Textgen, _) => Vec::new(),
    };
    let mut ours = Samples::default();
    for run in 0..args.warm_up + args.runs.max(1) {
        let mut samples = Samples::default();
        run_service(service, &args, &image, &mut samples)?;
        if run >= args.warm_up {
            ours.extend(samples);
        }
    }
    let mut reference = Samples::default();
    if let Some(python) = &args.reference_python {
        for run in 0..args.warm_up + args.reference_runs.unwrap_or(args.runs).max(1) {
            let mut samples = Samples::default();
            run_reference(service, python, &args, &mut samples)?;
            if run >= args.warm_up {
                reference.extend(samples);
            }
        }
    }
    let key = "start to first answer";
    let ratio = match (reference.get(key), ours.get(key)) {
        (Some(theirs), Some(ours)) => Some(summary(theirs).1 / summary(ours).1),
        _ => None,
    };
    if args.json {
        println!(
            "{}",
            json!({
                "service": service.name(),
                "model": args.model,
                "ours": to_json(&ours),
                "reference": to_json(&reference),
                "reference_over_ours_first_answer": ratio,
            })
        );
        return Ok(());
    }
    print_table(
        &format!("{} (ours), {} fresh processes", service.name(), args.runs.max(1)),
        &ours,
    );
    if !reference.0.is_empty() {
        let stack = match service {
            Service::Classifier => "timm + PyTorch",
            Service::Textgen => "transformers + PyTorch",
        };
        print_table(&format!("reference: {stack}, fresh processes"), &reference);
    }
    if let Some(ratio) = ratio {
        println!("median start to first answer: the reference takes {ratio:.1}x as long");
    }
    Ok(())
}
