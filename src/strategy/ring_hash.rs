//! Consistent hashing on a ring, placed exactly as nginx's `hash $key consistent` places it.
//!
//! # The algorithm
//!
//! Each endpoint puts points on a ring of 2³² positions, 160 per unit of weight; a key
//! hashes to a position and goes to the endpoint of the first point at or after it,
//! wrapping past the top (Karger et al., "Consistent Hashing and Random Trees", STOC 1997;
//! the "ketama" layout of libketama and `Cache::Memcached::Fast`). Removing an endpoint
//! moves only the keys that landed on its points, each to the next point clockwise; adding
//! one takes keys only for its own points.
//!
//! # Compatibility with nginx
//!
//! For the same servers (same strings, same weights) and the same key string, this strategy
//! chooses the server nginx's `upstream { hash $key consistent; ... }` chooses, so an
//! application that moves its balancing from nginx into the process keeps every key where it
//! was. The rules below are those of nginx's `ngx_http_upstream_hash_module.c`: functions
//! `ngx_http_upstream_init_chash` (in current nginx `ngx_http_upstream_update_chash`, which
//! also rebuilds the ring when the servers of a `zone` upstream change),
//! `ngx_http_upstream_find_chash_point` and `ngx_http_upstream_get_chash_peer`. The
//! placement rules read the same in older sources and in the current one; the code here is
//! written from those facts, not from nginx's code.
//!
//! - **Server string.** nginx hashes the text of each `server` directive as written, not the
//!   addresses it resolves to (`server backend.example:8080` is hashed as
//!   `backend.example:8080`, whichever addresses it resolves to; see nginx issue #523). This
//!   strategy hashes [`Endpoints::name`]: give each endpoint the name nginx had as its
//!   `server` string, for example `10.0.0.1:8080` (the default name of a `SocketAddr` key),
//!   with the balancer builder's `endpoint_name` when the key differs.
//! - **Host and port.** If the name starts with `unix:` (any case), the host is everything
//!   after those five bytes and the port is empty. Otherwise the name is scanned from its end
//!   over ASCII digits: if a `:` comes before any other byte, the host is what precedes that
//!   colon and the port what follows it (possibly nothing: `host:` has an empty port);
//!   otherwise the whole name is the host and the port is empty. So `10.0.0.1:80` is host
//!   `10.0.0.1`, port `80`; `[::1]:80` is host `[::1]` (brackets kept), port `80`; `[::1]`,
//!   `backend.example` and `10.0.0.1` have no port (nginx does not hash the implied port
//!   80: `server 10.0.0.1;` and `server 10.0.0.1:80;` are different rings).
//! - **Base hash.** CRC-32 (IEEE) of the host bytes, then one NUL byte, then the port bytes,
//!   as one message, not finalised.
//! - **Points.** `points = 160 × weight`. Point `j` is the CRC-32 that continues from the
//!   base hash over the four bytes of point `j - 1`'s value in little-endian order (all zero
//!   for point 0), finalised. Each point is computed from the base state, not from the state
//!   after the previous point.
//! - **Ring.** All points sorted by value; of points with equal values only one is kept. In
//!   nginx which one survives depends on its `qsort` when two servers collide; here the
//!   endpoint listed first keeps it. (With 160 points per server a collision between two
//!   servers has a probability of about `(160 n)² / 2³³`: 3 × 10⁻⁴ for ten servers.)
//! - **Lookup.** The key's hash is the CRC-32 of its bytes. It goes to the first point whose
//!   value is at least the key's hash; past the last point it wraps to the first.
//! - **Down servers.** nginx keeps a `down` (or failed) server's points and skips them; this
//!   strategy is rebuilt without an endpoint that leaves the eligible set. Both send the
//!   endpoint's keys to the first point clockwise of another server, and no other key moves.
//! - **Fallback.** When the chosen server cannot take the request, nginx moves to the next
//!   point clockwise and skips points of servers it has already tried; attempt `k` here does
//!   the same: it returns the endpoint of the next point clockwise whose endpoint no earlier
//!   attempt returned, so attempts return distinct endpoints in ring order (current nginx
//!   gives up after 20 points and falls back to round robin; the balancer instead tries
//!   every endpoint).
//!
//! Where this differs from nginx: requests with an empty or missing key follow
//! [`MissingKey`](super::MissingKey) (random by default; nginx 1.17.1 and later use round
//! robin, which is [`MissingKey::RoundRobin`](super::MissingKey::RoundRobin)), and very
//! large weights are scaled down (below).
//!
//! # Weights and memory
//!
//! While `160 × sum(weights)` is at most `max(2²⁰, 160 n)` points the ring is exactly
//! nginx's. Beyond that (nginx weights are small integers; ours go to `u32::MAX`) every
//! weight is scaled to `max(1, weight × max(2²⁰, 160 n) / (160 × sum(weights)))`, as if the
//! user had configured those smaller weights, so the ring never exceeds `2 × max(2²⁰, 160 n)`
//! points. [`Ring::is_nginx_compatible`] tells which case applies. Each point costs 12 bytes
//! (value, endpoint, distance to the endpoint's previous point) plus 2 to 4 bytes of index:
//! about 2.3 KB per endpoint of weight 1.
//!
//! An endpoint of weight 0 gets no points (as nginx would do) and is reached only after
//! every endpoint on the ring has been tried; if every weight is 0, all count as 1.
//! Endpoints with the same name get the same points, and the one listed first keeps them.
//!
//! # Cost
//!
//! A lookup hashes the key (CRC-32, 8 bytes per step) and finds its point through an index
//! of the top bits of the hash (about two points per index bucket), so it costs the same
//! at any ring size, apart from cache misses. A fallback attempt walks the ring from the
//! previous attempt's point and checks each point in O(1) (each point knows how far back its
//! endpoint's previous point is); no allocation on any path.

use super::hashing::{keyless_options, pick_in_order, present, Keyless, PreferenceOrder, LOW};
use super::round_robin::Cycle;
use super::{Context, Endpoints, Strategy};

/// Points per unit of weight (nginx's constant).
pub(crate) const POINTS_PER_WEIGHT: u64 = 160;

/// The point budget below which the ring is exactly nginx's: `max(MIN_BUDGET, 160 n)`.
const MIN_BUDGET: u64 = 1 << 20;

/// Consistent hashing on an nginx-compatible ring. See the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct RingHash {
    keyless: Keyless,
}

impl RingHash {
    /// A ring that routes keyless requests at random.
    pub fn new() -> Self {
        Self::default()
    }
}

keyless_options!(RingHash, "a random position on the ring");

/// The ring [`RingHash`] builds: sorted points and an index over them.
#[derive(Debug, Clone)]
pub struct Ring {
    /// Point values, ascending and distinct, each with its endpoint (side by side: a
    /// lookup reads one cache line for both).
    points: Box<[(u32, u32)]>,
    /// For each point, how many points back (clockwise distance) the previous point of the
    /// same endpoint is; the ring's length if it has only this one.
    back: Box<[u32]>,
    /// `index[b]` is the first point whose value's top bits are at least `b`.
    index: Box<[u32]>,
    /// `value >> shift` is a value's index bucket.
    shift: u32,
    /// Endpoints without points, in index order (weight 0, or a repeated name).
    unplaced: Box<[u32]>,
    /// How many endpoints have points.
    placed: u32,
    /// How many endpoints the ring was built for.
    endpoints: usize,
    nginx_compatible: bool,
    cycle: Option<Cycle>,
}

impl Ring {
    /// The number of points on the ring.
    pub fn points(&self) -> usize {
        self.points.len()
    }

    /// Whether the ring is exactly nginx's for these names and weights (weights were not
    /// scaled down; see the [module docs](self#weights-and-memory)).
    pub fn is_nginx_compatible(&self) -> bool {
        self.nginx_compatible
    }

    /// Bytes of heap memory the ring holds.
    pub fn heap_size(&self) -> usize {
        self.points.len() * 8
            + (self.back.len() + self.index.len()) * 4
            + self.unplaced.len() * 4
            + self.cycle.as_ref().map_or(0, |c| c.order().len() * 4)
    }

    /// The first point at or after `hash`, wrapping to 0.
    #[inline]
    fn lookup(&self, hash: u32) -> usize {
        let bucket = (u64::from(hash) >> self.shift) as usize;
        let lo = self.index[bucket] as usize;
        let hi = self.index[bucket + 1] as usize;
        let p = lo + self.points[lo..hi].partition_point(|&(x, _)| x < hash);
        if p == self.points.len() {
            0
        } else {
            p
        }
    }

    /// From point `start`, the first point at clockwise distance `from` or more whose
    /// endpoint does not own any point at a smaller distance and is accepted.
    #[inline]
    fn walk<F: FnMut(usize) -> bool>(
        &self,
        start: usize,
        from: u64,
        mut accept: F,
    ) -> Option<(usize, u64)> {
        let len = self.points.len();
        let mut t = from as usize;
        if t == 0 {
            // The first point is always new: no need to read its `back`.
            let e = self.points[start].1 as usize;
            if accept(e) {
                return Some((e, (start as u64) << 32));
            }
            t = 1;
        }
        let mut p = start + t;
        if p >= len {
            p -= len;
        }
        while t < len {
            // The endpoint's previous point is `back` points behind: before `start` (so
            // this endpoint was not seen yet) exactly when `back > t`.
            if self.back[p] as usize > t {
                let e = self.points[p].1 as usize;
                if accept(e) {
                    return Some((e, ((start as u64) << 32) | t as u64));
                }
            }
            t += 1;
            p += 1;
            if p == len {
                p = 0;
            }
        }
        None
    }

    /// What attempt `attempt` returns once every endpoint on the ring was returned: the
    /// endpoints without points in index order, then `attempt mod n`.
    fn after_last(&self, attempt: u32, n: usize) -> usize {
        let k = (attempt as usize).saturating_sub(self.placed as usize);
        match self.unplaced.get(k) {
            Some(&i) => i as usize,
            None => attempt as usize % n.max(1),
        }
    }
}

/// Splits an nginx `server` string into the host and port bytes nginx hashes (see the
/// [module docs](self#compatibility-with-nginx)).
pub(crate) fn split_host_port(name: &str) -> (&[u8], &[u8]) {
    let b = name.as_bytes();
    if b.len() >= 5 && b[..5].eq_ignore_ascii_case(b"unix:") {
        return (&b[5..], b"");
    }
    for (j, &c) in b.iter().rev().enumerate() {
        if c == b':' {
            let colon = b.len() - j - 1;
            return (&b[..colon], &b[colon + 1..]);
        }
        if !c.is_ascii_digit() {
            break;
        }
    }
    (b, b"")
}

/// Appends the `count` points of server `name`, tagged with `owner`, as `value << 32 | owner`.
fn push_points(name: &str, count: u64, owner: u32, out: &mut Vec<u64>) {
    let (host, port) = split_host_port(name);
    let mut base = crc32fast::Hasher::new();
    base.update(host);
    base.update(&[0]);
    base.update(port);
    let mut prev = 0u32;
    for _ in 0..count {
        let mut c = base.clone();
        c.update(&prev.to_le_bytes());
        prev = c.finalize();
        out.push((u64::from(prev) << 32) | u64::from(owner));
    }
}

/// Points per endpoint: `160 × weight`, scaled down past the budget; and whether unscaled.
fn point_counts(endpoints: &Endpoints<'_>) -> (Vec<u64>, bool) {
    let n = endpoints.len() as u64;
    let all_zero = endpoints.weights().all(|w| w == 0);
    let weights: Vec<u64> = endpoints
        .weights()
        .map(|w| if all_zero { 1 } else { u64::from(w) })
        .collect();
    let total: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    let budget = MIN_BUDGET.max(POINTS_PER_WEIGHT * n);
    if total * u128::from(POINTS_PER_WEIGHT) <= u128::from(budget) {
        let counts = weights.iter().map(|w| w * POINTS_PER_WEIGHT).collect();
        return (counts, true);
    }
    let units = u128::from(budget / POINTS_PER_WEIGHT);
    let counts = weights
        .iter()
        .map(|&w| {
            if w == 0 {
                0
            } else {
                ((u128::from(w) * units / total) as u64).max(1) * POINTS_PER_WEIGHT
            }
        })
        .collect();
    (counts, false)
}

impl Strategy for RingHash {
    type Table = Ring;

    fn build(&self, endpoints: &Endpoints<'_>) -> Ring {
        let n = endpoints.len();
        let (counts, nginx_compatible) = point_counts(endpoints);
        let mut points = Vec::with_capacity(counts.iter().sum::<u64>() as usize);
        for (i, &count) in counts.iter().enumerate() {
            push_points(endpoints.name(i), count, i as u32, &mut points);
        }
        // Sorting `value << 32 | owner` orders equal values by owner, so keeping the first
        // of each value keeps the endpoint listed first.
        points.sort_unstable();
        points.dedup_by_key(|p| *p >> 32);

        let len = points.len();
        let points: Box<[(u32, u32)]> = points
            .iter()
            .map(|&p| ((p >> 32) as u32, p as u32))
            .collect();

        // Distance back to the same endpoint's previous point, around the ring.
        let mut last = vec![u32::MAX; n];
        for (p, &(_, e)) in points.iter().enumerate() {
            last[e as usize] = p as u32;
        }
        let mut back = vec![0u32; len].into_boxed_slice();
        for (p, &(_, e)) in points.iter().enumerate() {
            let prev = last[e as usize] as usize;
            let d = (p + len - prev) % len.max(1);
            back[p] = if d == 0 { len as u32 } else { d as u32 };
            last[e as usize] = p as u32;
        }
        let unplaced: Box<[u32]> = (0..n as u32)
            .filter(|&i| last[i as usize] == u32::MAX)
            .collect();

        // About two points per bucket of the index.
        let bits = (usize::BITS - len.leading_zeros())
            .saturating_sub(1)
            .min(31);
        let shift = 32 - bits;
        let buckets = 1usize << bits;
        let mut index = Vec::with_capacity(buckets + 1);
        let mut p = 0usize;
        for b in 0..=buckets as u64 {
            while p < len && (u64::from(points[p].0) >> shift) < b {
                p += 1;
            }
            index.push(p as u32);
        }

        Ring {
            points,
            back,
            index: index.into_boxed_slice(),
            shift,
            placed: (n - unplaced.len()) as u32,
            endpoints: n,
            unplaced,
            nginx_compatible,
            cycle: self.keyless.build(endpoints),
        }
    }

    #[inline]
    fn pick(&self, table: &Ring, endpoints: &Endpoints<'_>, cx: &Context<'_>) -> usize {
        pick_in_order(self, table, endpoints, cx, |attempt| {
            table.after_last(attempt, endpoints.len())
        })
    }

    fn uses_request_key(&self) -> bool {
        true
    }

    fn seed(&self) -> Option<u64> {
        self.keyless.seed()
    }
}

impl PreferenceOrder for RingHash {
    #[inline]
    fn find<F: FnMut(usize) -> bool>(
        &self,
        table: &Ring,
        endpoints: &Endpoints<'_>,
        key: Option<&[u8]>,
        after: Option<u64>,
        accept: F,
    ) -> Option<(usize, u64)> {
        let keyless = &self.keyless;
        keyless.find(&table.cycle, endpoints, key, after, accept, |accept| {
            let len = table.points.len();
            if len == 0 || endpoints.len() != table.endpoints {
                return None;
            }
            match after {
                None => {
                    let hash = match present(key) {
                        Some(k) => crc32fast::hash(k),
                        None => keyless.random32(),
                    };
                    table.walk(table.lookup(hash), 0, accept)
                }
                Some(c) => {
                    let start = (c >> 32) as usize % len;
                    let from = (c & LOW) + 1;
                    table.walk(start, from, accept)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::EndpointList;

    #[test]
    fn host_and_port_follow_nginx() {
        let s = |name| {
            let (h, p) = split_host_port(name);
            (
                std::str::from_utf8(h).unwrap(),
                std::str::from_utf8(p).unwrap(),
            )
        };
        assert_eq!(s("10.0.0.1:8080"), ("10.0.0.1", "8080"));
        assert_eq!(s("10.0.0.1"), ("10.0.0.1", ""));
        assert_eq!(s("backend.example"), ("backend.example", ""));
        assert_eq!(s("backend.example:80"), ("backend.example", "80"));
        assert_eq!(s("[::1]:80"), ("[::1]", "80"));
        assert_eq!(s("[::1]"), ("[::1]", ""));
        assert_eq!(s("unix:/tmp/app.sock"), ("/tmp/app.sock", ""));
        assert_eq!(s("UNIX:/tmp/a:80"), ("/tmp/a:80", ""));
        assert_eq!(s("host:"), ("host", ""));
        assert_eq!(s("8080"), ("8080", ""));
        assert_eq!(s(""), ("", ""));
        assert_eq!(s("a:b"), ("a:b", ""));
    }

    #[test]
    fn back_distances_and_index_are_consistent() {
        let list = EndpointList::from_named([("a:1", 1), ("b:2", 2), ("c:3", 1)]);
        let ring = RingHash::new().build(&list.endpoints());
        let len = ring.points();
        assert_eq!(len, 4 * 160);
        assert!(ring.points.windows(2).all(|w| w[0].0 < w[1].0));
        let owner = |p: usize| ring.points[p].1;
        for p in 0..len {
            let prev = (p + len - ring.back[p] as usize) % len;
            assert_eq!(owner(prev), owner(p));
            for q in 1..ring.back[p] as usize {
                assert_ne!(owner((p + len - q) % len), owner(p));
            }
        }
        for h in (0..=u32::MAX).step_by(1 << 20).chain([u32::MAX, 0, 1]) {
            let want = ring.points.partition_point(|&(x, _)| x < h) % len;
            assert_eq!(ring.lookup(h), want, "{h}");
        }
    }

    #[test]
    fn huge_weights_are_scaled_and_bounded() {
        let list = EndpointList::from_weights([u32::MAX, u32::MAX, 1, 0]);
        let ring = RingHash::new().build(&list.endpoints());
        assert!(!ring.is_nginx_compatible());
        assert!(ring.points() as u64 <= 2 * MIN_BUDGET, "{}", ring.points());
        assert!(ring.points() as u64 >= MIN_BUDGET / 2);
        assert_eq!(&*ring.unplaced, &[3]);
        assert_eq!(ring.placed, 3);
    }

    #[test]
    fn all_zero_weights_count_as_one() {
        let list = EndpointList::from_weights([0, 0]);
        let ring = RingHash::new().build(&list.endpoints());
        assert_eq!(ring.points(), 320);
        assert!(ring.unplaced.is_empty());
    }

    #[test]
    fn duplicate_names_go_to_the_first() {
        let list = EndpointList::from_named([("x:1", 1), ("x:1", 1), ("y:1", 1)]);
        let ring = RingHash::new().build(&list.endpoints());
        assert_eq!(ring.points(), 320);
        assert_eq!(&*ring.unplaced, &[1]);
    }
}
