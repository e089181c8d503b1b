//! The probe task: sends the probes that picks ask for, off the request path, within a rate
//! and a concurrency bound, and files the answers in the pool.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::strategy::{State, Target};
use super::transport::{ProbeError, ProbeTransport};
use crate::health::ProbeFailure;

/// A token bucket: `rate` tokens a second, up to `burst`.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket of `rate` tokens a second, holding a tenth of a second's worth (at
    /// least `min_burst`).
    pub(crate) fn new(rate: f64, min_burst: f64) -> Self {
        let burst = (rate / 10.0).max(min_burst).max(1.0);
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    /// Takes up to `wanted` whole tokens now; returns how many it took.
    pub(crate) fn take(&mut self, wanted: u64) -> u64 {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        let taken = (wanted as f64).min(self.tokens.floor()).max(0.0);
        self.tokens -= taken;
        taken as u64
    }
}

/// Runs until the strategy is dropped: waits for picks to ask for probes, and sends them.
pub(crate) async fn run<T: ProbeTransport>(
    state: Weak<State>,
    transport: Arc<T>,
    wake: Arc<Notify>,
) {
    let mut bucket = match state.upgrade() {
        Some(s) => TokenBucket::new(s.settings.max_probe_rate, s.settings.group_size() as f64),
        None => return,
    };
    loop {
        wake.notified().await;
        let Some(state) = state.upgrade() else {
            return;
        };
        let wanted = state.take_credits();
        if wanted == 0 {
            continue;
        }
        let targets = state.targets.load_full();
        if targets.is_empty() {
            continue;
        }
        let allowed = bucket.take(wanted);
        state
            .stats
            .skipped
            .fetch_add(wanted - allowed, Ordering::Relaxed);
        let group = state.settings.group_size().min(targets.len());
        let mut left = allowed as usize;
        let mut chosen = Vec::with_capacity(group);
        while left > 0 {
            let g = left.min(group);
            sample_distinct(&state, targets.len(), g, &mut chosen);
            for &i in &chosen {
                send(&state, &transport, &targets[i]);
            }
            left -= g;
        }
    }
}

/// `g` distinct uniform indices in `0..n` (`g <= n`), into `out`.
fn sample_distinct(state: &State, n: usize, g: usize, out: &mut Vec<usize>) {
    out.clear();
    if g * 4 <= n {
        // Few of many: draw again on a repeat.
        while out.len() < g {
            let i = state.rng.below(n);
            if !out.contains(&i) {
                out.push(i);
            }
        }
    } else {
        // A partial Fisher–Yates shuffle.
        let mut all: Vec<usize> = (0..n).collect();
        for k in 0..g {
            let j = k + state.rng.below(n - k);
            all.swap(k, j);
        }
        out.extend_from_slice(&all[..g]);
    }
}

/// Sends one probe, unless the concurrency bound is reached; files its answer.
fn send<T: ProbeTransport>(state: &Arc<State>, transport: &Arc<T>, target: &Target) {
    let settings = &state.settings;
    let stats = &state.stats;
    if stats.in_flight.fetch_add(1, Ordering::AcqRel) >= settings.max_concurrent_probes as u64 {
        stats.in_flight.fetch_sub(1, Ordering::AcqRel);
        stats.skipped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    stats.sent.fetch_add(1, Ordering::Relaxed);
    let probe = transport.probe(&target.probe);
    let timeout = settings.probe_timeout;
    let state = state.clone();
    let target = target.clone();
    tokio::spawn(async move {
        let result = match tokio::time::timeout(timeout, probe).await {
            Ok(result) => result,
            Err(_) => Err(ProbeError::Failed(ProbeFailure::Timeout(timeout))),
        };
        state.stats.in_flight.fetch_sub(1, Ordering::AcqRel);
        file(&state, &target, result);
    });
}

/// Files one probe's result in the pool (if its endpoint is still a target).
fn file(state: &State, target: &Target, result: Result<super::ProbeAnswer, ProbeError>) {
    let targets = state.targets.load();
    let current = targets.iter().any(|t| t.key == target.key);
    match result {
        Ok(answer) => {
            state.stats.answered.fetch_add(1, Ordering::Relaxed);
            if !current {
                return;
            }
            state.file_answer(target.key, target.name.clone(), answer, targets.len());
        }
        Err(error) => {
            super::lock(&state.pool).remove_endpoint(target.key);
            match &error {
                ProbeError::Answer(_) => {
                    state.stats.invalid.fetch_add(1, Ordering::Relaxed);
                }
                ProbeError::Failed(failure) => {
                    state.stats.failed.fetch_add(1, Ordering::Relaxed);
                    if current {
                        let unreachable = crate::health::unreachable::is_unreachable(failure);
                        target.load.record_probe_failure(unreachable);
                    }
                }
            }
            tracing::trace!(endpoint = %target.name, %error, "prequal probe failed");
        }
    }
}
