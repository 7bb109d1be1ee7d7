//! Request bodies, read whole before routing (every route needs all of its body anyway), within
//! three bounds: a size per request, a time per body, and a budget of bytes that all requests'
//! bodies share. The budget is what bounds memory: the concurrency limit alone would come too
//! late, after the bodies it refuses have been buffered.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::metrics::Metrics;

/// Bodies buffered since memory was last handed back, past which the next moment no body is
/// held hands it back (`malloc_trim`): after a burst of uploads rather than after each one.
const TRIM_AFTER_BYTES: usize = 64 << 20;

/// The limits every body is read under, and the budget they share.
#[derive(Debug)]
pub struct BodyIntake {
    max_bytes: usize,
    timeout: Duration,
    budget: Arc<Semaphore>,
    budget_bytes: usize,
    buffered_since_trim: AtomicUsize,
    metrics: Arc<Metrics>,
}

/// Why a body was not read.
enum Refusal {
    TooLarge,
    OverBudget,
    TimedOut,
    Unreadable(String),
}

impl BodyIntake {
    /// Bodies of at most `max_bytes` each, arriving within `timeout`, `budget_bytes` of them
    /// held at once.
    pub fn new(max_bytes: usize, timeout: Duration, budget_bytes: usize, metrics: Arc<Metrics>) -> Self {
        let budget_bytes = budget_bytes.min(Semaphore::MAX_PERMITS);
        Self {
            max_bytes,
            timeout,
            budget: Arc::new(Semaphore::new(budget_bytes)),
            budget_bytes,
            buffered_since_trim: AtomicUsize::new(0),
            metrics,
        }
    }

    /// Reads `body` whole, holding its bytes in the budget. A body refused part-way is still
    /// read to its end (discarded, up to four times the limit and within the deadline) so that
    /// the client, still sending, sees the answer rather than a reset connection.
    async fn read(
        self: &Arc<Self>,
        mut body: Body,
        declared: Option<usize>,
    ) -> Result<(Vec<u8>, Reservation), Refusal> {
        let deadline = Instant::now() + self.timeout;
        let mut reservation = Reservation::new(self.clone());
        let mut refusal = match declared {
            Some(n) if n > self.max_bytes => Some(Refusal::TooLarge),
            Some(n) if !reservation.grow_to(n) => Some(Refusal::OverBudget),
            _ => None,
        };
        let mut buffered = Vec::new();
        if refusal.is_none() {
            buffered.reserve_exact(reservation.bytes);
        }
        let mut total = 0usize;
        loop {
            let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => return Err(Refusal::TimedOut),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(Refusal::Unreadable(e.to_string())),
                Ok(Some(Ok(frame))) => frame,
            };
            let Some(data) = frame.data_ref() else {
                continue;
            };
            total = total.saturating_add(data.len());
            if total > self.max_bytes.saturating_mul(4) {
                break;
            }
            if refusal.is_some() {
                continue;
            }
            if total > self.max_bytes {
                refusal = Some(Refusal::TooLarge);
            } else if !reservation.grow_to(total) {
                refusal = Some(Refusal::OverBudget);
            } else {
                buffered.extend_from_slice(data);
                continue;
            }
            // Refused part-way: what was held goes back while the rest is read and discarded.
            buffered = Vec::new();
            reservation = Reservation::new(self.clone());
        }
        if total > self.max_bytes {
            return Err(Refusal::TooLarge);
        }
        match refusal {
            Some(refusal) => Err(refusal),
            None => Ok((buffered, reservation)),
        }
    }

    fn refuse(&self, refusal: Refusal) -> Response {
        let (error, close) = match refusal {
            Refusal::TooLarge => (
                ApiError::from_status(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the request body is over the limit of {} bytes", self.max_bytes),
                ),
                false,
            ),
            Refusal::OverBudget => {
                self.metrics.increment("bodies_over_budget", 1);
                (
                    ApiError::overloaded(format!(
                        "the server is holding {} bytes of request bodies, its limit; retry shortly",
                        self.budget_bytes
                    )),
                    false,
                )
            }
            Refusal::TimedOut => {
                self.metrics.increment("body_timeouts", 1);
                (
                    ApiError::from_status(
                        StatusCode::REQUEST_TIMEOUT,
                        format!(
                            "the request body did not arrive within {:.1} s",
                            self.timeout.as_secs_f64()
                        ),
                    ),
                    true,
                )
            }
            Refusal::Unreadable(e) => (
                ApiError::bad_request(format!("cannot read the request body: {e}")),
                true,
            ),
        };
        let mut response = error.into_response();
        if close {
            // The rest of the body will not be read: the connection cannot carry another request.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }

    /// Hands freed memory back to the system once no body is held after a burst of them.
    fn released(&self, bytes: usize) {
        let since = self.buffered_since_trim.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if since < TRIM_AFTER_BYTES || self.budget.available_permits() < self.budget_bytes {
            return;
        }
        self.buffered_since_trim.store(0, Ordering::Relaxed);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn_blocking(crate::process::release_free_memory);
        }
    }
}

/// The bytes of one body held in the budget, given back when it drops.
struct Reservation {
    intake: Arc<BodyIntake>,
    permit: Option<OwnedSemaphorePermit>,
    bytes: usize,
}

impl Reservation {
    fn new(intake: Arc<BodyIntake>) -> Self {
        Self {
            intake,
            permit: None,
            bytes: 0,
        }
    }

    /// Holds `bytes` in all, if the budget has them now.
    fn grow_to(&mut self, bytes: usize) -> bool {
        if bytes <= self.bytes {
            return true;
        }
        let Ok(more) = u32::try_from(bytes - self.bytes) else {
            return false;
        };
        let Ok(permit) = self.intake.budget.clone().try_acquire_many_owned(more) else {
            return false;
        };
        match &mut self.permit {
            Some(held) => held.merge(permit),
            None => self.permit = Some(permit),
        }
        self.bytes = bytes;
        true
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.intake.released(self.bytes);
    }
}

/// Middleware: reads the whole body under the intake's bounds, then routes the request with it.
/// The body's bytes stay held in the budget until the answer is made.
pub async fn buffer_body(State(intake): State<Arc<BodyIntake>>, request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > intake.max_bytes.saturating_mul(4)) {
        return intake.refuse(Refusal::TooLarge);
    }
    let (parts, body) = request.into_parts();
    match intake.read(body, declared).await {
        Ok((buffered, reservation)) => {
            let response = next.run(Request::from_parts(parts, Body::from(buffered))).await;
            drop(reservation);
            response
        }
        Err(refusal) => intake.refuse(refusal),
    }
}
