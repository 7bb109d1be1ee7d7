//! Prometheus metrics, kept in memory and rendered as text on `/metrics`.
//!
//! A handful of families is all a FaaS operator needs: requests by route and status, latency
//! histograms, requests in flight, model batch sizes, and the init phases.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::phases::Phase;
use crate::server::ModelCard;

const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const BATCH_BUCKETS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];
const ROWS_BUCKETS: [f64; 12] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
];

#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Cumulative counts per bucket upper bound, then the count of all observations.
    buckets: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], value: f64) {
        if self.buckets.is_empty() {
            self.buckets = vec![0; bounds.len()];
        }
        for (bucket, bound) in self.buckets.iter_mut().zip(bounds) {
            if value <= *bound {
                *bucket += 1;
            }
        }
        self.count += 1;
        self.sum += value;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str, bounds: &[f64]) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bucket, bound) in self.buckets.iter().zip(bounds) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {bucket}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Debug, Default)]
struct Families {
    /// (route, method, status) -> count.
    requests: BTreeMap<(String, String, u16), u64>,
    /// route -> latency histogram.
    latency: BTreeMap<String, Histogram>,
    batch_size: Histogram,
    /// kind -> rows of that kind per model step (steps without any not counted).
    step_rows: BTreeMap<&'static str, Histogram>,
    step_duration: Histogram,
    counters: BTreeMap<&'static str, u64>,
}

/// All metrics of one process.
#[derive(Debug, Default)]
pub struct Metrics {
    families: Mutex<Families>,
    in_flight: AtomicI64,
}

impl Metrics {
    /// Counts a finished request.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, latency: Duration) {
        let mut f = self.families.lock().unwrap_or_else(|p| p.into_inner());
        *f.requests
            .entry((route.to_string(), method.to_string(), status))
            .or_default() += 1;
        f.latency
            .entry(route.to_string())
            .or_default()
            .observe(&LATENCY_BUCKETS, latency.as_secs_f64());
    }

    /// Counts the size of one model batch.
    pub fn observe_batch(&self, size: usize) {
        let mut f = self.families.lock().unwrap_or_else(|p| p.into_inner());
        f.batch_size.observe(&BATCH_BUCKETS, size as f64);
    }

    /// Counts one model step of a scheduler: its rows of each kind, and how long it took (what
    /// an operator reads to see what delays tokens).
    pub fn observe_step(&self, rows: &[(&'static str, usize)], took: Duration) {
        let mut f = self.families.lock().unwrap_or_else(|p| p.into_inner());
        for &(kind, count) in rows.iter().filter(|(_, count)| *count > 0) {
            f.step_rows
                .entry(kind)
                .or_default()
                .observe(&ROWS_BUCKETS, count as f64);
        }
        f.step_duration.observe(&LATENCY_BUCKETS, took.as_secs_f64());
    }

    /// Adds to a named counter (`<service>_<name>_total` in the output).
    pub fn increment(&self, name: &'static str, by: u64) {
        let mut f = self.families.lock().unwrap_or_else(|p| p.into_inner());
        *f.counters.entry(name).or_default() += by;
    }

    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn request_finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Requests being answered now.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self, service: &str, card: &ModelCard, phases: &[Phase]) -> String {
        let f = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        out.push_str("# HELP model_info The model served, where and how it computes.\n");
        out.push_str("# TYPE model_info gauge\n");
        let _ = writeln!(
            out,
            "model_info{{model=\"{}\",device=\"{}\",dtype=\"{}\",kernels=\"{}\"}} 1",
            card.id, card.device, card.dtype, card.kernels
        );
        out.push_str("# HELP http_requests_total Requests answered, by route, method and status.\n");
        out.push_str("# TYPE http_requests_total counter\n");
        for ((route, method, status), count) in &f.requests {
            let _ = writeln!(
                out,
                "http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {count}"
            );
        }
        out.push_str("# HELP http_request_duration_seconds Request latency, by route.\n");
        out.push_str("# TYPE http_request_duration_seconds histogram\n");
        for (route, histogram) in &f.latency {
            histogram.render(
                &mut out,
                "http_request_duration_seconds",
                &format!("route=\"{route}\""),
                &LATENCY_BUCKETS,
            );
        }
        out.push_str("# HELP http_requests_in_flight Requests being answered.\n");
        out.push_str("# TYPE http_requests_in_flight gauge\n");
        let _ = writeln!(out, "http_requests_in_flight {}", self.in_flight());
        out.push_str("# HELP model_batch_size Inputs per model forward pass.\n");
        out.push_str("# TYPE model_batch_size histogram\n");
        if f.batch_size.count > 0 {
            f.batch_size
                .render(&mut out, "model_batch_size", "", &BATCH_BUCKETS);
        }
        if f.step_duration.count > 0 {
            out.push_str("# HELP model_step_rows Rows per model step, by kind (steps with none of a kind not counted).\n");
            out.push_str("# TYPE model_step_rows histogram\n");
            for (kind, histogram) in &f.step_rows {
                histogram.render(
                    &mut out,
                    "model_step_rows",
                    &format!("kind=\"{kind}\""),
                    &ROWS_BUCKETS,
                );
            }
            out.push_str("# HELP model_step_duration_seconds Time of each model step.\n");
            out.push_str("# TYPE model_step_duration_seconds histogram\n");
            f.step_duration
                .render(&mut out, "model_step_duration_seconds", "", &LATENCY_BUCKETS);
        }
        for (name, value) in &f.counters {
            let _ = writeln!(
                out,
                "# TYPE {service}_{name}_total counter\n{service}_{name}_total {value}"
            );
        }
        out.push_str("# HELP init_phase_duration_seconds Duration of each start-up phase.\n");
        out.push_str("# TYPE init_phase_duration_seconds gauge\n");
        for phase in phases {
            let _ = writeln!(
                out,
                "init_phase_duration_seconds{{phase=\"{}\"}} {}",
                phase.name,
                phase.duration.as_secs_f64()
            );
        }
        let total: Duration = phases.iter().map(|p| p.duration).sum();
        out.push_str("# TYPE init_duration_seconds gauge\n");
        let _ = writeln!(out, "init_duration_seconds {}", total.as_secs_f64());
        out
    }
}
