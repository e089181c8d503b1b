//! The request body on its way upstream ([`Upload`]): the client's body, whose errors are
//! the client's (tower-lb's [`ClientBody`], so the balancer never counts them against the
//! upstream), with nginx's `client_body_timeout` between two reads, and a flag that says
//! when the whole body has been handed to the upstream connection ([`Written`]), without
//! which that connection must not be reused.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tower_lb::http::{ClientBody, ClientBodyError};

use super::stall::Stall;

/// A client's request body, as the upstream connection reads it.
pub struct Upload {
    body: ClientBody<Incoming>,
    stall: Stall,
    written: Written,
    failed: bool,
}

/// Whether a request body has been handed whole to the upstream connection. Shared by the
/// body and whoever decides to reuse the connection; a body that was empty from the start
/// shares nothing.
#[derive(Clone, Default)]
pub struct Written(Option<Arc<AtomicBool>>);

impl Written {
    pub fn is_done(&self) -> bool {
        self.0
            .as_ref()
            .is_none_or(|done| done.load(Ordering::Acquire))
    }

    fn set(&self) {
        if let Some(done) = &self.0 {
            done.store(true, Ordering::Release);
        }
    }
}

/// No part of the request body came within the body timeout.
#[derive(Debug)]
pub struct BodyTimeout(pub Duration);

impl fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no part of the request body came within {:?}", self.0)
    }
}

impl std::error::Error for BodyTimeout {}

impl Upload {
    pub fn new(body: Incoming, timeout: Duration) -> Self {
        let written = if body.is_end_stream() {
            Written(None)
        } else {
            Written(Some(Arc::new(AtomicBool::new(false))))
        };
        Upload {
            body: ClientBody::new(body),
            stall: Stall::new(timeout),
            written,
            failed: false,
        }
    }

    /// The flag that says when this body has been handed whole to the connection.
    pub fn written(&self) -> Written {
        self.written.clone()
    }
}

impl Body for Upload {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Pending => {
                if this.stall.expired(cx) {
                    this.failed = true;
                    let error = ClientBodyError::new(BodyTimeout(this.stall.timeout()));
                    return Poll::Ready(Some(Err(error)));
                }
                Poll::Pending
            }
            Poll::Ready(frame) => {
                this.stall.progress();
                match &frame {
                    None => this.written.set(),
                    Some(Ok(_)) if this.body.is_end_stream() => this.written.set(),
                    Some(Err(_)) => this.failed = true,
                    Some(Ok(_)) => {}
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let end = self.failed || self.body.is_end_stream();
        if end && !self.failed {
            self.written.set();
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
