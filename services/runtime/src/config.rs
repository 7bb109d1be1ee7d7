//! The flags every service shares. Each has an environment variable, so a container needs no
//! arguments; `PORT` is read as is because Knative, Cloud Run and Lambda Web Adapter set it.

use std::net::IpAddr;
use std::time::Duration;

/// Network, limits and shutdown settings of `serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,

    /// Port to listen on (0 picks a free one; the chosen port is logged).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,

    /// The model's name in answers and in `/v2/models/{name}` (default: the hub repo id, or
    /// the weights directory's name, which in a container is `model`).
    #[arg(long, env = "SERVED_MODEL_NAME")]
    pub served_model_name: Option<String>,

    /// Origins whose pages may call the service from a browser (CORS), comma-separated, or `*`
    /// for any; none by default.
    #[arg(long, env = "CORS_ALLOW_ORIGIN", value_delimiter = ',', value_parser = parse_origin)]
    pub cors_allow_origin: Vec<axum::http::HeaderValue>,

    /// When set, every route but health needs `Authorization: Bearer <key>`.
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Largest request body accepted, in bytes (over it: 413).
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 20 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Bytes of request bodies held at once by all requests together (default: 8 times
    /// `--max-body-bytes`); a body that would go past it is refused at once with 429, so a
    /// burst of large uploads cannot take the process's memory.
    #[arg(long, env = "MAX_BUFFERED_BYTES")]
    pub max_buffered_bytes: Option<usize>,

    /// Longest wait for a request's headers, in seconds, counted from the connection's
    /// opening or from its previous answer: it is the idle timeout of kept-alive connections
    /// too. Past it the connection is closed.
    #[arg(long, env = "HEADER_TIMEOUT", default_value = "10", value_parser = parse_seconds)]
    pub header_timeout: Duration,

    /// Longest time a request's body may take to arrive, in seconds (over it: 408).
    #[arg(long, env = "BODY_TIMEOUT", default_value = "30", value_parser = parse_seconds)]
    pub body_timeout: Duration,

    /// Connections open at once; one more is answered 429 and closed.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// Requests answered at once; one more is refused at once with 429 and Retry-After.
    #[arg(long, env = "MAX_CONCURRENCY", default_value_t = 64)]
    pub max_concurrency: usize,

    /// Longest a request may take, in seconds (over it: 503).
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "60", value_parser = parse_seconds)]
    pub request_timeout: Duration,

    /// On SIGTERM or SIGINT, how long in-flight requests may take to finish, in seconds.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "10", value_parser = parse_seconds)]
    pub shutdown_timeout: Duration,
}

impl ServeArgs {
    /// `--max-buffered-bytes`, or its default.
    pub fn buffered_bytes_budget(&self) -> usize {
        self.max_buffered_bytes
            .unwrap_or_else(|| self.max_body_bytes.saturating_mul(8))
    }
}

/// An origin (`https://app.example.com`) or `*`, as its header value.
fn parse_origin(value: &str) -> Result<axum::http::HeaderValue, String> {
    let value = value.trim();
    let is_origin = value == "*" || value.starts_with("http://") || value.starts_with("https://");
    axum::http::HeaderValue::from_str(value)
        .ok()
        .filter(|_| is_origin && !value.ends_with('/'))
        .ok_or_else(|| format!("`{value}` is not an origin (scheme://host[:port], no path) or `*`"))
}

/// A number of seconds (fractions allowed) as a [`Duration`].
pub(crate) fn parse_seconds(value: &str) -> Result<Duration, String> {
    let seconds: f64 = value
        .parse()
        .map_err(|_| format!("`{value}` is not a number of seconds"))?;
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("`{value}` is not a valid number of seconds"))
}

/// `--device` and `--dtype`: where and in what precision the model runs.
#[derive(Debug, Clone, clap::Args)]
pub struct ComputeArgs {
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, env = "DEVICE", default_value = "auto")]
    pub device: DeviceArg,

    /// Weights type (on the CPU, activations are f32 whatever the weights).
    #[arg(long, env = "DTYPE", value_enum, default_value_t = DTypeArg::F32)]
    pub dtype: DTypeArg,
}

impl ComputeArgs {
    /// This build computes on the CPU, with the weight types in `supported` (what the model's
    /// kernels have), at the level of vector instructions [`simd::Level::from_env`] picks
    /// (the CPU's best unless `CPU_KERNELS` asks for less), which it answers and logs;
    /// anything else is refused at start, with the way out.
    pub fn cpu_kernels(&self, supported: &[DTypeArg]) -> Result<simd::Level, String> {
        if let DeviceArg::Cuda(_) = self.device {
            return Err("this build has no CUDA support; run with --device cpu (or auto)".into());
        }
        if !supported.contains(&self.dtype) {
            let choices: Vec<String> = supported.iter().map(|d| format!("--dtype {d}")).collect();
            return Err(format!(
                "--dtype {} is not supported by this model's CPU kernels; use {}",
                self.dtype,
                choices.join(" or ")
            ));
        }
        let level = simd::Level::from_env().map_err(|e| e.to_string())?;
        // Whether bf16 weights are multiplied in pairs (`vdpbf16ps`) or widened: the
        // calibration runs only where it can decide something.
        let bf16_pairs =
            self.dtype == DTypeArg::Bf16 && level == simd::Level::Avx512Bf16 && simd::bf16_pairs_pay();
        tracing::info!(
            kernels = level.name(),
            best = simd::Level::best().name(),
            bf16_pairs,
            "cpu kernels"
        );
        Ok(level)
    }
}

/// `--device`: where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceArg {
    /// CUDA when this build has it and a GPU is present, else the CPU.
    Auto,
    Cpu,
    /// A CUDA device by ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl std::str::FromStr for DeviceArg {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("`{other}` is not a device (auto, cpu, cuda or cuda:N)")),
        }
    }
}

/// `--dtype`: the floating-point type of the weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DTypeArg {
    F32,
    F16,
    Bf16,
}

impl std::fmt::Display for DTypeArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        })
    }
}
