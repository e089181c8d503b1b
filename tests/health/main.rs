//! Health through the balancer: active probes, passive outlier detection, panic mode, slow
//! start, draining and health events.
//!
//! Two kinds of tests:
//!
//! - **Real hyper servers on 127.0.0.1** that answer 500 or 503, hang past the timeout,
//!   refuse connections, then recover. They run on the real clock (tokio's paused clock
//!   does not drive real sockets) with short intervals, and wait for conditions by polling
//!   them ([`common::eventually`]), never by sleeping and hoping. Their timeouts and
//!   ejections are long enough for a loaded machine, and what they assert of time is only
//!   what a timer guarantees: never before it is due.
//! - **In-memory endpoints and a scripted in-memory probe under tokio's paused clock**, for
//!   everything that is about time: ejection lengths, probation, rise and fall, the outlier
//!   interval, the slow-start ramp. These assert exact counts and exact times.
//!
//! `cargo test --all-features --test health` (the HTTP probe tests need feature `http`).
//!
//! One file per concept: `support.rs` (what the tests share), `bad_input.rs`, `outlier.rs`,
//! `probes.rs` (active checks), `panic.rs`, `slow_start.rs`, `draining.rs`, `real_servers.rs`
//! (outlier detection and retries over real servers) and `http_probes.rs`.

#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod draining;
#[cfg(feature = "http")]
mod http_probes;
mod outlier;
mod panic;
mod probes;
mod real_servers;
mod slow_start;
mod support;
