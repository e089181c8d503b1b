//! DNS discovery against a real authoritative DNS server on loopback, in this process.
//!
//! The server (below) speaks DNS over UDP and TCP on 127.0.0.1 with an ephemeral port; it
//! is written on hickory-proto's message types, which hickory-resolver re-exports, so it
//! needs no extra dependency and its answers can be changed, failed (SERVFAIL, NXDOMAIN,
//! empty) and counted while a balancer runs. No test touches outside DNS.

#![cfg(feature = "dns")]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, SRV};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::proto::serialize::binary::BinEncodable;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

use tower_lb::classify::ErrorsAsFailures;
use tower_lb::discover::dns::{Dns, DnsError};
use tower_lb::strategy::RoundRobin;
use tower_lb::Balance;

// ---------------------------------------------------------------------------------------
// The server.

/// What the server answers for one name.
#[derive(Clone, Debug)]
enum Entry {
    /// A records with this TTL.
    A(Vec<Ipv4Addr>, u32),
    /// SRV records (priority, weight, port, target) with this TTL.
    Srv(Vec<(u16, u16, u16, &'static str)>, u32),
    /// This response code and no records (SERVFAIL, NXDOMAIN, or NOERROR for "empty").
    Code(ResponseCode),
}

#[derive(Default)]
struct ZoneState {
    entries: HashMap<Name, Entry>,
    /// When each A query for a name came (UDP and TCP): one per lookup (with an AAAA query),
    /// unless the answer is too long for UDP and the query comes again over TCP.
    a_queries: HashMap<Name, Vec<Instant>>,
    tcp_queries: usize,
}

/// A running loopback DNS server whose records the test changes.
#[derive(Clone)]
struct Server {
    addr: SocketAddr,
    zone: Arc<Mutex<ZoneState>>,
}

fn name(s: &str) -> Name {
    Name::from_str(s).unwrap()
}

impl Server {
    async fn start() -> Server {
        // UDP and TCP on the same port: the UDP port the system picks may be taken for
        // TCP (by a connection of another test), so pick again until both are free.
        let mut attempts = 0;
        let (udp, tcp, addr) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = udp.local_addr().unwrap();
            match TcpListener::bind(addr).await {
                Ok(tcp) => break (udp, tcp, addr),
                Err(error) if attempts < 50 => {
                    attempts += 1;
                    let _ = error;
                }
                Err(error) => panic!("no port free for both UDP and TCP: {error}"),
            }
        };
        let server = Server {
            addr,
            zone: Arc::default(),
        };
        let zone = server.zone.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                    return;
                };
                if let Some(mut reply) = answer(&zone, &buf[..n], false) {
                    if reply.len() > 512 {
                        // Too long for a plain UDP datagram: send it truncated (header and
                        // question only, TC set) so the client retries over TCP.
                        let mut m = Message::from_vec(&reply).unwrap();
                        m.take_answers();
                        m.set_truncated(true);
                        reply = m.to_bytes().unwrap();
                    }
                    let _ = udp.send_to(&reply, peer).await;
                }
            }
        });
        let zone = server.zone.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = tcp.accept().await else {
                    return;
                };
                let zone = zone.clone();
                tokio::spawn(async move {
                    loop {
                        let Ok(len) = stream.read_u16().await else {
                            return;
                        };
                        let mut buf = vec![0u8; usize::from(len)];
                        if stream.read_exact(&mut buf).await.is_err() {
                            return;
                        }
                        let Some(reply) = answer(&zone, &buf, true) else {
                            return;
                        };
                        let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                        framed.extend_from_slice(&reply);
                        if stream.write_all(&framed).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        server
    }

    fn set(&self, n: &str, entry: Entry) {
        self.zone.lock().unwrap().entries.insert(name(n), entry);
    }

    /// A records for 127.0.0.`last`, TTL 1 s.
    fn a(&self, n: &str, last: &[u8]) {
        self.set(n, Entry::A(ips(last), 1));
    }

    /// SRV records, TTL 1 s, written "priority weight port target" and separated by commas.
    fn srv(&self, n: &str, records: &'static str) {
        let records = records
            .split(", ")
            .map(|r| {
                let f: Vec<&'static str> = r.split(' ').collect();
                let num = |i: usize| f[i].parse().unwrap();
                (num(0), num(1), num(2), f[3])
            })
            .collect();
        self.set(n, Entry::Srv(records, 1));
    }

    /// Waits for the single endpoint 127.0.0.1:80, then for `refreshes` more lookups of `n`,
    /// and returns the times between one lookup and the next, as the server saw them.
    async fn refresh_intervals(&self, probe: &Probe, n: &str, refreshes: usize) -> Vec<Duration> {
        probe.wait_for(&[("127.0.0.1:80", 1)]).await;
        let what = format!("{refreshes} refreshes of {n}");
        common::eventually(&what, async || self.lookup_times(n).len() > refreshes).await;
        let times = self.lookup_times(n);
        times[..=refreshes]
            .windows(2)
            .map(|w| w[1] - w[0])
            .collect()
    }

    fn lookup_times(&self, n: &str) -> Vec<Instant> {
        let zone = self.zone.lock().unwrap();
        zone.a_queries.get(&name(n)).cloned().unwrap_or_default()
    }

    fn remove(&self, n: &str) {
        self.zone.lock().unwrap().entries.remove(&name(n));
    }

    fn tcp_queries(&self) -> usize {
        self.zone.lock().unwrap().tcp_queries
    }
}

fn answer(zone: &Mutex<ZoneState>, request: &[u8], tcp: bool) -> Option<Vec<u8>> {
    let request = Message::from_vec(request).ok()?;
    let query = request.queries().first()?.clone();
    let mut reply = Message::new();
    reply
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_authoritative(true)
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true)
        .add_query(query.clone());
    let qname = query.name().clone();
    let mut state = zone.lock().unwrap();
    if query.query_type() == RecordType::A {
        let times = state.a_queries.entry(qname.clone()).or_default();
        times.push(Instant::now());
    }
    if tcp {
        state.tcp_queries += 1;
    }
    match state.entries.get(&qname) {
        None => {
            reply.set_response_code(ResponseCode::NXDomain);
        }
        Some(Entry::Code(code)) => {
            reply.set_response_code(*code);
        }
        Some(Entry::A(ips, ttl)) => {
            if query.query_type() == RecordType::A {
                for ip in ips {
                    reply.add_answer(Record::from_rdata(qname.clone(), *ttl, RData::A(A(*ip))));
                }
            }
        }
        Some(Entry::Srv(records, ttl)) => {
            if query.query_type() == RecordType::SRV {
                for (priority, weight, port, target) in records {
                    let srv = SRV::new(*priority, *weight, *port, name(target));
                    reply.add_answer(Record::from_rdata(qname.clone(), *ttl, RData::SRV(srv)));
                }
            }
        }
    }
    reply.to_bytes().ok()
}

// ---------------------------------------------------------------------------------------
// The balancer side.

#[derive(Clone)]
struct Probe {
    balance: Balance<SocketAddr, AddrService, RoundRobin, ErrorsAsFailures>,
    made: Arc<AtomicUsize>,
}

/// Answers each request with the endpoint's address.
#[derive(Clone, Debug)]
struct AddrService(SocketAddr);

impl tower::Service<()> for AddrService {
    type Response = SocketAddr;
    type Error = Infallible;
    type Future = std::future::Ready<Result<SocketAddr, Infallible>>;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: ()) -> Self::Future {
        std::future::ready(Ok(self.0))
    }
}

fn balancer(dns: Dns) -> Probe {
    let made = Arc::new(AtomicUsize::new(0));
    let counter = made.clone();
    let balance = Balance::builder()
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .fail_fast(Duration::from_millis(200))
        .build_with(dns, move |addr: &SocketAddr| {
            counter.fetch_add(1, Ordering::Relaxed);
            AddrService(*addr)
        })
        .unwrap();
    Probe { balance, made }
}

/// A balancer over the A records of `n`, at `port`, from `server`.
fn a_probe(server: &Server, n: &str, port: u16) -> Probe {
    balancer(fast(Dns::a(n, port).unwrap(), server))
}

fn fast(dns: Dns, server: &Server) -> Dns {
    dns.nameservers([server.addr])
        .min_ttl(Duration::from_millis(100))
        .jitter(0.0)
}

impl Probe {
    /// The endpoint set: address → weight.
    fn set(&self) -> BTreeMap<SocketAddr, u32> {
        self.balance
            .endpoints()
            .into_iter()
            .map(|e| (e.key, e.weight))
            .collect()
    }

    /// Waits (up to 10 s) until the endpoint set is `want`.
    async fn wait_for(&self, want: &[(&str, u32)]) {
        let want: BTreeMap<SocketAddr, u32> =
            want.iter().map(|(a, w)| (a.parse().unwrap(), *w)).collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let now = self.set();
            if now == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "endpoint set is {now:?}, expected {want:?}; discovery {:?}",
                self.balance.discovery_stats()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (up to 10 s) until the balancer has counted more than `n` discovery errors.
    async fn wait_errors(&self, n: u64) -> u64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let errors = self.balance.discovery_stats().errors;
            if errors > n {
                return errors;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no discovery error counted"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn send(&self, n: usize) {
        use tower::{Service, ServiceExt};
        let mut b = self.balance.clone();
        for _ in 0..n {
            b.ready().await.unwrap().call(()).await.unwrap();
        }
    }

    fn completed(&self, addr: &str) -> u64 {
        let addr: SocketAddr = addr.parse().unwrap();
        self.balance
            .endpoints()
            .into_iter()
            .find(|e| e.key == addr)
            .map_or(0, |e| e.completed)
    }
}

fn ips(last: &[u8]) -> Vec<Ipv4Addr> {
    last.iter().map(|n| Ipv4Addr::new(127, 0, 0, *n)).collect()
}

// ---------------------------------------------------------------------------------------
// The tests.

#[tokio::test]
async fn a_records_added_and_removed_under_a_running_balancer() {
    let server = Server::start().await;
    server.a("web.test.", &[1, 2]);
    let probe = a_probe(&server, "web.test.", 8080);
    probe
        .wait_for(&[("127.0.0.1:8080", 1), ("127.0.0.2:8080", 1)])
        .await;
    probe.send(10).await;
    assert_eq!(probe.completed("127.0.0.2:8080"), 5);

    // An address is added when the TTL expires; the others keep their service and stats.
    server.a("web.test.", &[1, 2, 3]);
    probe
        .wait_for(&[
            ("127.0.0.1:8080", 1),
            ("127.0.0.2:8080", 1),
            ("127.0.0.3:8080", 1),
        ])
        .await;
    assert_eq!(probe.completed("127.0.0.2:8080"), 5, "statistics kept");
    assert_eq!(
        probe.made.load(Ordering::Relaxed),
        3,
        "one service per address"
    );

    // One is removed.
    server.a("web.test.", &[2, 3]);
    probe
        .wait_for(&[("127.0.0.2:8080", 1), ("127.0.0.3:8080", 1)])
        .await;
    assert_eq!(probe.completed("127.0.0.2:8080"), 5);
    assert_eq!(probe.made.load(Ordering::Relaxed), 3);
    assert_eq!(probe.balance.discovery_stats().errors, 0);
}

/// Each refresh comes, and none comes before the answer's TTL, bounded by `min_ttl` and
/// `max_ttl`, has run out (jitter 0): a timer is never early, so the lower bound holds on any
/// machine, and a refresh paced by another bound (min_ttl instead of the TTL, an uncapped TTL
/// of an hour) either comes too soon or not at all.
#[tokio::test]
async fn refresh_follows_the_ttl_within_the_bounds() {
    let server = Server::start().await;
    // TTL 1 s, min_ttl 100 ms: a lookup a second, not ten.
    server.a("ttl.test.", &[1]);
    let probe = a_probe(&server, "ttl.test.", 80);
    let intervals = server.refresh_intervals(&probe, "ttl.test.", 2).await;
    assert!(
        intervals.iter().all(|&i| i >= Duration::from_secs(1)),
        "lookups {intervals:?} apart with TTL 1 s"
    );

    // A long TTL is capped by max_ttl.
    server.set("long.test.", Entry::A(ips(&[1]), 3600));
    let dns = fast(Dns::a("long.test.", 80).unwrap(), &server).max_ttl(Duration::from_millis(300));
    let probe = balancer(dns);
    let intervals = server.refresh_intervals(&probe, "long.test.", 3).await;
    assert!(
        intervals.iter().all(|&i| i >= Duration::from_millis(300)),
        "lookups {intervals:?} apart with max_ttl 300 ms"
    );

    // A TTL of 0 is raised to min_ttl.
    server.set("zero.test.", Entry::A(ips(&[1]), 0));
    let dns = Dns::a("zero.test.", 80)
        .unwrap()
        .nameservers([server.addr])
        .min_ttl(Duration::from_millis(500))
        .jitter(0.0);
    let probe = balancer(dns);
    let intervals = server.refresh_intervals(&probe, "zero.test.", 2).await;
    assert!(
        intervals.iter().all(|&i| i >= Duration::from_millis(500)),
        "lookups {intervals:?} apart with min_ttl 500 ms"
    );
}

#[tokio::test]
async fn servfail_nxdomain_and_empty_answers_keep_the_last_set() {
    let server = Server::start().await;
    server.a("flaky.test.", &[1, 2]);
    let probe = a_probe(&server, "flaky.test.", 80);
    let both = [("127.0.0.1:80", 1), ("127.0.0.2:80", 1)];
    probe.wait_for(&both).await;

    let mut errors = 0;
    for failure in [
        Entry::Code(ResponseCode::ServFail),
        Entry::Code(ResponseCode::NXDomain),
        Entry::Code(ResponseCode::NoError), // an empty answer
    ] {
        server.set("flaky.test.", failure.clone());
        // Two errors in a row are counted, and the set stays.
        errors = probe.wait_errors(errors).await;
        errors = probe.wait_errors(errors).await;
        assert_eq!(probe.set().len(), 2, "after {failure:?}");
        let last = probe.balance.discovery_stats().last_error.unwrap();
        assert!(last.contains("flaky.test"), "{last}");
    }
    // A record that is simply gone (NXDOMAIN from the zone) behaves the same.
    server.remove("flaky.test.");
    errors = probe.wait_errors(errors).await;
    assert_eq!(probe.set().len(), 2);

    // Recovery with a different set.
    server.a("flaky.test.", &[2, 3]);
    probe
        .wait_for(&[("127.0.0.2:80", 1), ("127.0.0.3:80", 1)])
        .await;
    let _ = errors;
}

#[tokio::test]
async fn the_stream_yields_typed_errors() {
    use futures::StreamExt;
    let server = Server::start().await;
    server.set("fail.test.", Entry::Code(ResponseCode::ServFail));
    server.set("empty.test.", Entry::Code(ResponseCode::NoError));
    let next = |n: &str| {
        let mut dns = fast(Dns::a(n, 80).unwrap(), &server).into_stream();
        async move { dns.next().await.unwrap() }
    };
    match next("fail.test.").await {
        Err(DnsError::Resolve { .. }) => {}
        other => panic!("SERVFAIL gave {other:?}"),
    }
    match next("missing.test.").await {
        Err(DnsError::NotFound { name }) => assert_eq!(name, "missing.test."),
        other => panic!("NXDOMAIN gave {other:?}"),
    }
    match next("empty.test.").await {
        Err(DnsError::NoRecords { .. }) => {}
        other => panic!("empty answer gave {other:?}"),
    }
}

#[tokio::test]
async fn max_stale_removes_the_set_then_recovers() {
    let server = Server::start().await;
    server.a("stale.test.", &[1, 2]);
    let dns =
        fast(Dns::a("stale.test.", 80).unwrap(), &server).max_stale(Duration::from_millis(1500));
    let probe = balancer(dns);
    probe
        .wait_for(&[("127.0.0.1:80", 1), ("127.0.0.2:80", 1)])
        .await;
    server.set("stale.test.", Entry::Code(ResponseCode::ServFail));
    probe.wait_for(&[]).await;
    server.a("stale.test.", &[3]);
    probe.wait_for(&[("127.0.0.3:80", 1)]).await;
}

#[tokio::test]
async fn srv_ports_weights_and_priorities() {
    const SVC: &str = "_http._tcp.svc.test.";
    let server = Server::start().await;
    server.a("a.test.", &[1]);
    server.a("b.test.", &[2]);
    server.a("c.test.", &[3]);
    server.srv(
        SVC,
        "10 3 9001 a.test., 10 1 9002 b.test., 20 1 9003 c.test.",
    );
    let probe = balancer(fast(Dns::srv(SVC).unwrap(), &server));
    probe
        .wait_for(&[("127.0.0.1:9001", 3), ("127.0.0.2:9002", 1)])
        .await;
    probe.send(8).await;
    let b_before = probe.completed("127.0.0.2:9002");
    assert!(b_before > 0);

    // A reweight updates the endpoint in place: same service, same statistics.
    server.srv(
        SVC,
        "10 3 9001 a.test., 10 5 9002 b.test., 20 1 9003 c.test.",
    );
    probe
        .wait_for(&[("127.0.0.1:9001", 3), ("127.0.0.2:9002", 5)])
        .await;
    assert_eq!(probe.completed("127.0.0.2:9002"), b_before);
    assert_eq!(probe.made.load(Ordering::Relaxed), 2);

    // One target of the group stops resolving: it is skipped.
    server.remove("a.test.");
    probe.wait_for(&[("127.0.0.2:9002", 5)]).await;

    // No target of priority 10 resolves: priority 20 takes over.
    server.set("b.test.", Entry::Code(ResponseCode::ServFail));
    probe.wait_for(&[("127.0.0.3:9003", 1)]).await;

    // Priority 10 comes back, all weights 0: each gets weight 1 (RFC 2782: pick evenly).
    server.a("a.test.", &[1]);
    server.srv(
        SVC,
        "10 0 9001 a.test., 10 0 9004 a.test., 20 1 9003 c.test.",
    );
    probe
        .wait_for(&[("127.0.0.1:9001", 1), ("127.0.0.1:9004", 1)])
        .await;

    // Nothing resolves at all: an error, and the last set stays.
    server.srv(SVC, "1 1 9009 nowhere.test., 1 1 0 a.test., 1 1 9010 .");
    let errors = probe.balance.discovery_stats().errors;
    probe.wait_errors(errors).await;
    assert_eq!(probe.set().len(), 2);
    let last = probe.balance.discovery_stats().last_error.unwrap();
    assert!(last.contains("no usable records"), "{last}");
}

#[tokio::test]
async fn duplicates_merge_and_large_answers_arrive_over_tcp() {
    let server = Server::start().await;
    // Duplicate A records are one endpoint.
    server.a("dup.test.", &[1, 1, 2, 2, 2]);
    let probe = a_probe(&server, "dup.test.", 80);
    probe
        .wait_for(&[("127.0.0.1:80", 1), ("127.0.0.2:80", 1)])
        .await;

    // Duplicate SRV records, and two records reaching one address: weights add up.
    server.a("x.test.", &[1]);
    server.a("y.test.", &[1]);
    server.srv(
        "_dup._tcp.test.",
        "1 2 7000 x.test., 1 2 7000 x.test., 1 3 7000 y.test.",
    );
    let probe = balancer(fast(Dns::srv("_dup._tcp.test.").unwrap(), &server));
    probe.wait_for(&[("127.0.0.1:7000", 7)]).await;

    // 250 A records do not fit a 512-byte datagram: the answer comes over TCP.
    let many: Vec<Ipv4Addr> = (0..250u8).map(|i| Ipv4Addr::new(127, 1, 0, i)).collect();
    server.set("big.test.", Entry::A(many.clone(), 1));
    let probe = a_probe(&server, "big.test.", 80);
    let want: Vec<(String, u32)> = many.iter().map(|ip| (format!("{ip}:80"), 1)).collect();
    let want: Vec<(&str, u32)> = want.iter().map(|(a, w)| (a.as_str(), *w)).collect();
    probe.wait_for(&want).await;
    assert!(server.tcp_queries() > 0, "the long answer came over TCP");

    // max_endpoints keeps the lowest addresses.
    let dns = fast(Dns::a("big.test.", 80).unwrap(), &server).max_endpoints(10);
    let probe = balancer(dns);
    probe.wait_for(&want[..10]).await;
}

#[tokio::test]
async fn settings_of_duration_max_mean_never_and_do_not_panic() {
    use futures::StreamExt;
    let never = |dns: Dns| {
        dns.min_ttl(Duration::MAX)
            .max_ttl(Duration::MAX)
            .max_stale(Duration::MAX)
            .jitter(1.0)
    };
    // A good answer: the next lookup is due "never".
    let mut literal = never(Dns::a("127.0.0.7", 9000).unwrap()).into_stream();
    match literal.next().await {
        Some(Ok(tower_lb::discover::Change::Reset(list))) => assert_eq!(list.len(), 1),
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        futures::poll!(literal.next()).is_pending(),
        "no second lookup"
    );

    // A failed lookup: the retry is due "never" too.
    let server = Server::start().await;
    server.set("fail.test.", Entry::Code(ResponseCode::ServFail));
    let mut failing =
        never(Dns::a("fail.test.", 80).unwrap().nameservers([server.addr])).into_stream();
    assert!(matches!(
        failing.next().await,
        Some(Err(DnsError::Resolve { .. }))
    ));
    assert!(futures::poll!(failing.next()).is_pending(), "no retry");

    // Under a balancer, the set arrives and discovery carries on.
    server.a("web.test.", &[1]);
    let probe = balancer(never(
        Dns::a("web.test.", 80).unwrap().nameservers([server.addr]),
    ));
    probe.wait_for(&[("127.0.0.1:80", 1)]).await;
    let stats = probe.balance.discovery_stats();
    assert!(!stats.ended && stats.errors == 0, "{stats:?}");
}
