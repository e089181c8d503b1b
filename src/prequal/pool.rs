//! The client's probe pool: the probe answers a client holds, and the hot–cold rule that
//! picks among them (Wydrowski et al., NSDI 2024, §3 and §4).
//!
//! - The pool holds at most `capacity` probes (16), the newest one per endpoint; a new
//!   probe replaces the endpoint's older one, and when the pool is full the oldest probe
//!   leaves to make room.
//! - Probes older than `max_age` (1 s) are dropped before each pick.
//! - **Reuse budget.** Each probe may serve up to `b_reuse` picks (see [`reuse_budget`]);
//!   each pick that uses a probe adds 1 to the probe's RIF (the request it sends will be in
//!   flight there), so that the next picks see it busier and spread.
//! - **Removal.** After each pick one more probe leaves the pool, alternately the oldest
//!   and the worst (the hot probe with the highest RIF if any is hot, else the probe with
//!   the highest latency).
//! - **Hot–cold lexicographic selection.** A probe is *hot* when its RIF exceeds the
//!   `Q_RIF` quantile (2^-0.25 ≈ 0.84) of the RIFs of recent probe answers (the last 64,
//!   nearest-rank quantile). If any probe is cold, the cold probe with the lowest latency
//!   wins (then the lower RIF, then the newer); if all are hot, the lowest RIF wins (then
//!   the lower latency). [`Selection::RifOnly`] ignores latency and takes the lowest RIF.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::wire::ProbeAnswer;

/// How a pick chooses among the probes in the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Selection {
    /// The paper's hot–cold lexicographic rule: among cold probes the lowest latency, and
    /// the lowest RIF when all are hot.
    #[default]
    HotCold,
    /// The lowest RIF (then the lowest latency), whatever the latency: the variant some
    /// reimplementations recommend, because servers' latency estimates can make clients
    /// herd onto a few replicas.
    RifOnly,
}

/// The paper's reuse budget: how many picks one probe may serve,
///
/// ```text
/// b_reuse = max(1, (1 + δ) / ((1 − m/n) · r_probe − r_remove))
/// ```
///
/// where `m` is the pool's capacity, `n` the number of endpoints, `r_probe` the probes sent
/// per query, `r_remove` the probes removed per query (1 here) and δ a small margin. In the
/// steady state probes enter the pool at `(1 − m/n) · r_probe` per query (a fraction `m/n` of
/// them only replace a probe of the same endpoint) and leave at `r_remove + 1/b_reuse` (the
/// removals, and the uses that exhaust a budget); the budget keeps the pool from draining.
/// The equation is the paper's; three things around it are this crate's own, where the
/// equation has no answer or an impractical one: when the denominator is not positive
/// (probes cannot keep up with removals, for example when there are no more endpoints
/// than pool slots) the budget is `max_reuse`; it never exceeds `max_reuse` (16 by
/// default) either; and the strategy rounds a fractional budget up or down at random, in
/// proportion, so that probes serve the equation's number of picks on average.
pub fn reuse_budget(
    capacity: usize,
    endpoints: usize,
    probes_per_query: f64,
    removed_per_query: f64,
    delta: f64,
    max_reuse: u32,
) -> f64 {
    let max = f64::from(max_reuse.max(1));
    let fill = capacity as f64 / endpoints.max(1) as f64;
    let denominator = (1.0 - fill) * probes_per_query - removed_per_query;
    if denominator <= 0.0 || !denominator.is_finite() {
        return max;
    }
    let budget = (1.0 + delta) / denominator;
    if budget.is_nan() {
        return 1.0;
    }
    budget.clamp(1.0, max)
}

/// One probe in the pool.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// The endpoint: the address of its `Load`.
    pub(crate) key: usize,
    pub(crate) name: Arc<str>,
    /// The answer's RIF, plus the picks that used it since.
    pub(crate) rif: u64,
    pub(crate) latency_us: u64,
    pub(crate) received: Instant,
    pub(crate) uses_left: u32,
}

/// The probes of one client. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Pool {
    entries: Vec<Entry>,
    capacity: usize,
    max_age: Duration,
    selection: Selection,
    q_rif: f64,
    remove_oldest_next: bool,
    /// The RIFs of recent answers, newest last, and the same values sorted (kept in step,
    /// so that the quantile costs no sort and no allocation per answer).
    history: VecDeque<u64>,
    sorted: Vec<u64>,
    history_len: usize,
    /// Probes with a RIF above this are hot (`None`: no history, all cold).
    threshold: Option<u64>,
}

impl Pool {
    pub(crate) fn new(
        capacity: usize,
        max_age: Duration,
        q_rif: f64,
        history_len: usize,
        selection: Selection,
    ) -> Self {
        Pool {
            entries: Vec::with_capacity(capacity),
            capacity: capacity.max(1),
            max_age,
            selection,
            q_rif,
            remove_oldest_next: true,
            history: VecDeque::with_capacity(history_len),
            sorted: Vec::with_capacity(history_len),
            history_len: history_len.max(1),
            threshold: None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub(crate) fn threshold(&self) -> Option<u64> {
        self.threshold
    }

    /// Adds an answer from endpoint `key`, replacing its older probe; the oldest probe
    /// leaves if the pool is full.
    pub(crate) fn insert(
        &mut self,
        key: usize,
        name: Arc<str>,
        answer: ProbeAnswer,
        received: Instant,
        uses: u32,
    ) {
        self.remove_endpoint(key);
        if self.entries.len() >= self.capacity {
            self.remove_oldest();
        }
        self.entries.push(Entry {
            key,
            name,
            rif: answer.rif,
            latency_us: answer.latency_us,
            received,
            uses_left: uses.max(1),
        });
        self.remember(answer.rif);
    }

    /// Adds a RIF to the recent ones (forgetting the oldest) and updates the threshold.
    fn remember(&mut self, rif: u64) {
        if self.history.len() == self.history_len {
            if let Some(old) = self.history.pop_front() {
                if let Ok(i) = self.sorted.binary_search(&old) {
                    self.sorted.remove(i);
                }
            }
        }
        self.history.push_back(rif);
        let at = self.sorted.partition_point(|&v| v <= rif);
        self.sorted.insert(at, rif);
        self.threshold = nearest_rank(&self.sorted, self.q_rif);
    }

    /// Drops the probes received more than `max_age` before `now`.
    pub(crate) fn expire(&mut self, now: Instant) {
        let max_age = self.max_age;
        self.entries
            .retain(|e| now.saturating_duration_since(e.received) <= max_age);
    }

    /// Drops the probes of endpoint `key`.
    pub(crate) fn remove_endpoint(&mut self, key: usize) {
        self.entries.retain(|e| e.key != key);
    }

    /// Keeps only the probes of endpoints for which `keep` holds.
    pub(crate) fn retain_endpoints(&mut self, keep: impl Fn(usize) -> bool) {
        self.entries.retain(|e| keep(e.key));
    }

    fn is_hot(&self, e: &Entry) -> bool {
        self.threshold.is_some_and(|t| e.rif > t)
    }

    /// The position of the probe the selection rule picks.
    pub(crate) fn select(&self) -> Option<usize> {
        let all = self.entries.iter().enumerate();
        let by_rif = |(_, e): &(usize, &Entry)| (e.rif, e.latency_us);
        let chosen = match self.selection {
            Selection::RifOnly => all.min_by_key(by_rif),
            Selection::HotCold => all
                .clone()
                .filter(|(_, e)| !self.is_hot(e))
                .min_by_key(|(_, e)| (e.latency_us, e.rif, std::cmp::Reverse(e.received)))
                .or_else(|| all.min_by_key(by_rif)),
        };
        chosen.map(|(i, _)| i)
    }

    /// Uses the probe at `position` for one pick: its RIF goes up by one and its budget down;
    /// an exhausted probe leaves. Returns the endpoint's key.
    pub(crate) fn consume(&mut self, position: usize) -> usize {
        let e = &mut self.entries[position];
        e.rif = e.rif.saturating_add(1);
        e.uses_left = e.uses_left.saturating_sub(1);
        let key = e.key;
        if e.uses_left == 0 {
            self.entries.swap_remove(position);
        }
        key
    }

    /// The removal after a pick: alternately the oldest probe and the worst.
    pub(crate) fn remove_one(&mut self) {
        if self.entries.is_empty() {
            return;
        }
        if self.remove_oldest_next {
            self.remove_oldest();
        } else {
            self.remove_worst();
        }
        self.remove_oldest_next = !self.remove_oldest_next;
    }

    fn remove_oldest(&mut self) {
        if let Some(i) = (0..self.entries.len()).min_by_key(|&i| self.entries[i].received) {
            self.entries.swap_remove(i);
        }
    }

    fn remove_worst(&mut self) {
        let all = self.entries.iter().enumerate();
        let by_latency = |(_, e): &(usize, &Entry)| (e.latency_us, e.rif);
        let by_rif = |(_, e): &(usize, &Entry)| (e.rif, e.latency_us);
        let worst = match self.selection {
            Selection::RifOnly => all.max_by_key(by_rif),
            Selection::HotCold => all
                .clone()
                .filter(|(_, e)| self.is_hot(e))
                .max_by_key(by_rif)
                .or_else(|| all.max_by_key(by_latency)),
        };
        if let Some((i, _)) = worst {
            self.entries.swap_remove(i);
        }
    }
}

/// The nearest-rank `q` quantile of `sorted` (ascending): the smallest value with at least
/// a fraction `q` of the values at or below it.
fn nearest_rank(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn pool(selection: Selection) -> Pool {
        Pool::new(4, Duration::from_secs(1), 0.75, 8, selection)
    }

    fn add(p: &mut Pool, key: usize, rif: u64, latency_us: u64, at: Instant, uses: u32) {
        p.insert(
            key,
            key.to_string().into(),
            ProbeAnswer { rif, latency_us },
            at,
            uses,
        );
    }

    fn keys(p: &Pool) -> Vec<usize> {
        let mut k: Vec<usize> = p.entries.iter().map(|e| e.key).collect();
        k.sort_unstable();
        k
    }

    #[test]
    fn reuse_budget_follows_the_equation() {
        // (1 - 16/100) * 3 - 1 = 1.52: (1 + 1) / 1.52.
        let b = reuse_budget(16, 100, 3.0, 1.0, 1.0, 16);
        assert!((b - 2.0 / 1.52).abs() < 1e-12, "{b}");
        // A small δ: below 1, so 1.
        assert_eq!(reuse_budget(16, 100, 3.0, 1.0, 0.1, 16), 1.0);
        // One probe per query over 1000 endpoints: (1 - 0.016) - 1 < 0: the cap.
        assert_eq!(reuse_budget(16, 1000, 1.0, 1.0, 0.1, 16), 16.0);
        // (1 - 16/1000) * 1.5 - 1 = 0.476: 1.1 / 0.476.
        let b = reuse_budget(16, 1000, 1.5, 1.0, 0.1, 16);
        assert!((b - 1.1 / 0.476).abs() < 1e-12, "{b}");
        // No more endpoints than pool slots: the cap. NaN inputs never panic.
        assert_eq!(reuse_budget(16, 3, 3.0, 1.0, 0.1, 5), 5.0);
        assert_eq!(reuse_budget(16, 100, f64::NAN, 1.0, 0.1, 5), 5.0);
        assert_eq!(reuse_budget(16, 100, 3.0, 1.0, f64::NAN, 5), 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn newest_per_endpoint_capacity_and_age() {
        let mut p = pool(Selection::HotCold);
        let t0 = Instant::now();
        for key in 1..=4 {
            add(&mut p, key, 1, 100, t0 + key as u32 * MS, 1);
        }
        // A newer probe of 2 replaces its older one: still four.
        add(&mut p, 2, 5, 100, t0 + 10 * MS, 1);
        assert_eq!(keys(&p), [1, 2, 3, 4]);
        // Full: the oldest (1) leaves for 5.
        add(&mut p, 5, 1, 100, t0 + 11 * MS, 1);
        assert_eq!(keys(&p), [2, 3, 4, 5]);
        // At 1 s + 3 ms, 3 (received at 3 ms) is exactly 1 s old and stays; 4 is not yet.
        p.expire(t0 + Duration::from_secs(1) + 3 * MS);
        assert_eq!(keys(&p), [2, 3, 4, 5]);
        p.expire(t0 + Duration::from_secs(1) + 4 * MS);
        assert_eq!(keys(&p), [2, 4, 5]);
        p.expire(t0 + Duration::from_secs(2));
        assert_eq!(keys(&p), Vec::<usize>::new());
    }

    #[tokio::test(start_paused = true)]
    async fn hot_cold_picks_the_fastest_cold_then_the_least_loaded_hot() {
        let mut p = pool(Selection::HotCold);
        let t0 = Instant::now();
        // History 1, 2, 3, 9: the 0.75 quantile is 3; 9 is hot.
        add(&mut p, 1, 1, 900, t0, 1);
        add(&mut p, 2, 2, 500, t0, 1);
        add(&mut p, 3, 3, 700, t0, 1);
        add(&mut p, 4, 9, 10, t0, 1);
        assert_eq!(p.threshold(), Some(3));
        // The hot one is fastest, but the fastest cold one (2) wins.
        assert_eq!(p.entries[p.select().unwrap()].key, 2);
        // Lowest RIF only: 1.
        let mut q = pool(Selection::RifOnly);
        for e in p.entries.clone() {
            q.insert(
                e.key,
                e.name,
                ProbeAnswer {
                    rif: e.rif,
                    latency_us: e.latency_us,
                },
                t0,
                1,
            );
        }
        assert_eq!(q.entries[q.select().unwrap()].key, 1);
        // 9 (RIF 1) is the only cold probe: it wins; without it all are hot, and the
        // lowest RIF wins whatever its latency.
        let mut h = pool(Selection::HotCold);
        for rif in [1, 1, 1, 1, 1, 1] {
            add(&mut h, 9, rif, 1, t0, 1);
        }
        add(&mut h, 1, 5, 900, t0, 1);
        add(&mut h, 2, 4, 800, t0, 1);
        assert_eq!(h.threshold(), Some(1));
        assert_eq!(h.entries[h.select().unwrap()].key, 9);
        h.remove_endpoint(9);
        assert_eq!(h.entries[h.select().unwrap()].key, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn picks_bump_rif_and_spend_the_budget() {
        let mut p = pool(Selection::RifOnly);
        let t0 = Instant::now();
        add(&mut p, 1, 0, 100, t0, 2);
        add(&mut p, 2, 1, 100, t0, 3);
        // Picks by lowest RIF, each bumping it: 1 (0→1), then 1 again (tie 1–1 broken by
        // latency, equal, so the first: 1), exhausted after its 2 uses; then 2 three times.
        let mut order = Vec::new();
        while let Some(i) = p.select() {
            order.push(p.consume(i));
        }
        assert_eq!(order, [1, 1, 2, 2, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn removals_alternate_oldest_and_worst() {
        let mut p = pool(Selection::HotCold);
        let t0 = Instant::now();
        // History 1, 2, 3, 8: threshold (0.75) 3; 8 is hot.
        add(&mut p, 1, 1, 100, t0, 9); // oldest
        add(&mut p, 2, 2, 900, t0 + MS, 9); // slowest
        add(&mut p, 3, 3, 300, t0 + 2 * MS, 9);
        add(&mut p, 4, 8, 50, t0 + 3 * MS, 9); // hot
        p.remove_one();
        assert_eq!(keys(&p), [2, 3, 4], "first the oldest");
        p.remove_one();
        assert_eq!(keys(&p), [2, 3], "then the worst: the hot one");
        p.remove_one();
        assert_eq!(keys(&p), [3], "the oldest again");
        add(&mut p, 5, 1, 50, t0 + 4 * MS, 9);
        p.remove_one();
        assert_eq!(
            keys(&p),
            [5],
            "no hot probe: the slowest (3, 300 µs) is the worst"
        );
        p.remove_one();
        p.remove_one();
        assert!(p.entries.is_empty());
    }

    #[test]
    fn nearest_rank_quantile() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(nearest_rank(&v, 0.5), Some(50));
        assert_eq!(nearest_rank(&v, 2f64.powf(-0.25)), Some(85));
        assert_eq!(nearest_rank(&v, 1.0), Some(100));
        assert_eq!(nearest_rank(&v, 0.0), Some(1));
        assert_eq!(nearest_rank(&[], 0.5), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_threshold_follows_the_last_answers_only() {
        // A history of 8 at q 0.75: the 6th smallest of the last 8 RIFs.
        let mut p = pool(Selection::HotCold);
        let t0 = Instant::now();
        for rif in [100, 100, 100, 100, 100, 100, 100, 100] {
            add(&mut p, 1, rif, 1, t0, 1);
        }
        assert_eq!(p.threshold(), Some(100));
        for (k, rif) in [1, 2, 3, 4, 5, 6].into_iter().enumerate() {
            add(&mut p, 1, rif, 1, t0, 1);
            // k + 1 small values among 8: the 6th smallest is 100 until six are small.
            let expected = if k + 1 >= 6 { 6 } else { 100 };
            assert_eq!(p.threshold(), Some(expected), "after {rif}");
        }
        // Two more small ones push the last 100s out: 1..=8 now, the 6th is 6.
        add(&mut p, 1, 7, 1, t0, 1);
        add(&mut p, 1, 8, 1, t0, 1);
        assert_eq!(p.threshold(), Some(6));
    }
}
