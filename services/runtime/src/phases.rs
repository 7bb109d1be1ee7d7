//! Init phases: each step between process start and ready, timed, logged as one JSON line,
//! and kept for `/v1/models` and `/metrics`.

use std::time::{Duration, Instant};

use serde::Serialize;

/// One timed step of start-up.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Phase {
    pub name: String,
    /// Milliseconds.
    #[serde(rename = "duration_ms", serialize_with = "as_millis")]
    #[schema(value_type = f64)]
    pub duration: Duration,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

/// The phases of one start-up, in order.
#[derive(Debug, Clone, Default)]
pub struct InitPhases {
    phases: Vec<Phase>,
}

impl InitPhases {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `step`, recording and logging how long it took (also when it fails).
    pub fn run<T>(&mut self, name: &str, step: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let value = step();
        self.record(name, start.elapsed());
        value
    }

    /// Records a phase timed elsewhere.
    pub fn record(&mut self, name: &str, duration: Duration) {
        tracing::info!(
            phase = name,
            duration_ms = duration.as_secs_f64() * 1e3,
            "init phase"
        );
        self.phases.push(Phase {
            name: name.to_string(),
            duration,
        });
    }

    pub fn phases(&self) -> &[Phase] {
        &self.phases
    }

    pub fn total(&self) -> Duration {
        self.phases.iter().map(|p| p.duration).sum()
    }
}
