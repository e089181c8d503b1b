//! The failure penalty as a pick reads it: [`Load::failure_penalty`], on the clock of the
//! pick's [`Context`]. (The penalty is kept in the endpoint's [`Load`]; reading it needs
//! the pick's clock, which is why the reading is here.)

use super::Context;
use crate::endpoint::Load;

impl Load {
    /// The failure penalty: the endpoint's recent failures, each counting 1 when it happens
    /// and fading exponentially with the strategy's time constant τ (1 s for
    /// [`LeastRequest`](super::LeastRequest)). An endpoint that fails λ requests a second
    /// carries a penalty of about λ × τ: as many requests as it would have in flight if each
    /// of its failures had taken τ to answer, which is how least request counts it, so that
    /// an endpoint never draws traffic by failing fast.
    ///
    /// 0 when the endpoint has not failed lately (below 0.01 counts as 0), or when the
    /// balancer's strategy does not [read the penalty](super::Strategy::failure_penalty).
    /// Reading it costs one atomic load, plus a clock read (shared by the whole pick,
    /// through `cx`) while it is not 0.
    #[inline]
    pub fn failure_penalty(&self, cx: &Context<'_>) -> f64 {
        let bits = self.penalty_bits();
        if bits == 0 {
            return 0.0;
        }
        self.decayed_penalty(bits, cx.now_nanos())
    }
}
