//! etcd discovery and registration against real etcd members on loopback (see
//! `etcd_cluster`): registration and deregistration, lease expiry and re-registration,
//! compaction (between list and watch, and of a stalled live watch, with a list of two
//! pages after it), an emptied prefix, a restart of etcd (which a registration outlives),
//! and a three-member cluster that loses its leader while endpoints come and go.
//!
//! Each test skips with a message when the `etcd` binary is missing, except under `CI`.
//! Every wait is on an event from the source (with a generous timeout), not on a sleep.

#![cfg(feature = "etcd")]

mod etcd_cluster;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::{Client, DeleteOptions};
use futures::{Stream, StreamExt};

use etcd_cluster::{etcd_or_skip, options, Cluster};
use tower_lb::discover::etcd::{EndpointValue, Etcd, EtcdChange, EtcdError, EtcdKey, Registration};
use tower_lb::discover::Change;
use tower_lb::Metadata;

/// The longest wait for one item from a source.
const WAIT: Duration = Duration::from_secs(15);

/// One item as text: `+addr@key w=N` for an insert, `-addr@key` for a remove,
/// `reset[...]`, or `error: ...`.
fn describe(item: &EtcdChange) -> String {
    let short = |k: &EtcdKey| format!("{}@{}", k.addr(), k.key());
    match item {
        Ok(Change::Insert(e)) => format!("+{} w={}", short(&e.key), e.weight),
        Ok(Change::Remove(k)) => format!("-{}", short(k)),
        Ok(Change::Reset(v)) => {
            let v: Vec<String> = v.iter().map(|e| short(&e.key)).collect();
            format!("reset[{}]", v.join(","))
        }
        Err(e) => format!("error: {e}"),
    }
}

async fn next(source: &mut (impl Stream<Item = EtcdChange> + Unpin)) -> EtcdChange {
    match tokio::time::timeout(WAIT, source.next()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("the source ended"),
        Err(_) => panic!("no change from the source within {WAIT:?}"),
    }
}

async fn next_text(source: &mut (impl Stream<Item = EtcdChange> + Unpin)) -> String {
    describe(&next(source).await)
}

/// A source with short timeouts and backoff, for tests, read as a stream.
fn source(client: Client, prefix: &str) -> impl Stream<Item = EtcdChange> + Send + Unpin {
    Etcd::prefix(client, prefix)
        .request_timeout(Duration::from_secs(1))
        .backoff(Duration::from_millis(50), Duration::from_millis(500))
        .into_stream()
}

async fn put(client: &mut Client, key: &str, value: &str) -> i64 {
    let response = client.put(key, value, None).await.expect("put");
    response.header().unwrap().revision()
}

/// A one-member etcd holding `keys` (key, value), and a source on `prefix` whose first
/// list has come as a reset of `addr@key`s in key order; `None` when the test skips.
/// Keep the cluster in a named binding (`_cluster`): dropping it stops etcd.
async fn one_member(
    test: &str,
    prefix: &str,
    keys: &[(&str, &str)],
) -> Option<(
    Cluster,
    Client,
    impl Stream<Item = EtcdChange> + Send + Unpin,
)> {
    let cluster = Cluster::start(etcd_or_skip(test)?, 1).await;
    let mut client = cluster.client().await;
    for (key, value) in keys {
        put(&mut client, key, value).await;
    }
    let mut etcd = source(client.clone(), prefix);
    let listed: Vec<String> = keys
        .iter()
        .map(|(k, v)| format!("{}@{k}", v.trim()))
        .collect();
    let expected = format!("reset[{}]", listed.join(","));
    assert_eq!(next_text(&mut etcd).await, expected);
    Some((cluster, client, etcd))
}

#[tokio::test]
async fn register_update_and_deregister() {
    let Some((_cluster, mut client, mut etcd)) = one_member(
        "register_update_and_deregister",
        "/svc/",
        &[("/svc/a", "127.0.0.1:1001\n")],
    )
    .await
    else {
        return;
    };

    // A registration: weight and zone from the value, named by its address.
    let value = EndpointValue::new("127.0.0.1:1002")
        .unwrap()
        .with_weight(2)
        .with_zone("z1");
    let b = Registration::register(client.clone(), "/svc/b", &value, Duration::from_secs(5))
        .await
        .unwrap();
    match next(&mut etcd).await {
        Ok(Change::Insert(e)) => {
            assert_eq!(e.key, EtcdKey::new("/svc/b", "127.0.0.1:1002"));
            assert_eq!(e.weight, 2);
            let mut expected = Metadata::zone("z1");
            expected.name = Some("127.0.0.1:1002".into());
            assert_eq!(e.metadata, expected);
        }
        other => panic!("expected the insert of b, got {}", describe(&other)),
    }

    // A bad value skips its key and says so; a key outside the prefix is not seen.
    put(&mut client, "/svc/c", "no port here").await;
    put(&mut client, "/svc-other/x", "127.0.0.1:9").await;
    let error = next(&mut etcd).await.unwrap_err();
    match &error {
        EtcdError::InvalidValues { skipped, .. } => {
            assert_eq!(skipped.len(), 1);
            assert_eq!(skipped[0].key, "/svc/c");
        }
        other => panic!("expected InvalidValues, got {other}"),
    }
    // A new weight updates in place; a new address is a new endpoint.
    put(
        &mut client,
        "/svc/a",
        r#"{"addr":"127.0.0.1:1001","weight":5}"#,
    )
    .await;
    assert_eq!(next_text(&mut etcd).await, "+127.0.0.1:1001@/svc/a w=5");
    put(&mut client, "/svc/a", "127.0.0.1:1003").await;
    assert_eq!(next_text(&mut etcd).await, "-127.0.0.1:1001@/svc/a");
    assert_eq!(next_text(&mut etcd).await, "+127.0.0.1:1003@/svc/a w=1");
    // The same value again changes nothing: the next change is the shutdown's removal.
    put(&mut client, "/svc/a", "127.0.0.1:1003").await;
    b.shutdown().await.unwrap();
    assert_eq!(next_text(&mut etcd).await, "-127.0.0.1:1002@/svc/b");

    // Dropping a registration deregisters it too.
    let d = Registration::register(
        client.clone(),
        "/svc/d",
        &EndpointValue::new("127.0.0.1:1004").unwrap(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(next_text(&mut etcd).await, "+127.0.0.1:1004@/svc/d w=1");
    drop(d);
    assert_eq!(next_text(&mut etcd).await, "-127.0.0.1:1004@/svc/d");
    // A bad key that gets a good value is inserted; a delete removes.
    put(&mut client, "/svc/c", "127.0.0.1:1005").await;
    assert_eq!(next_text(&mut etcd).await, "+127.0.0.1:1005@/svc/c w=1");
    client
        .delete("/svc/", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    let mut removed = vec![next_text(&mut etcd).await, next_text(&mut etcd).await];
    removed.sort();
    assert_eq!(
        removed,
        ["-127.0.0.1:1003@/svc/a", "-127.0.0.1:1005@/svc/c"]
    );
}

/// A server that dies stops renewing its lease; its key goes after the TTL, while a live
/// server registered with the same TTL stays.
#[tokio::test]
async fn a_dead_servers_key_expires_after_its_ttl() {
    let Some(etcd) = etcd_or_skip("a_dead_servers_key_expires_after_its_ttl") else {
        return;
    };
    let cluster = Cluster::start(etcd, 1).await;
    let client = cluster.client().await;
    let ttl = Duration::from_secs(2);
    let live = Registration::register(
        client.clone(),
        "/exp/live",
        &EndpointValue::new("127.0.0.1:2001").unwrap(),
        ttl,
    )
    .await
    .unwrap();
    let mut etcd = source(client.clone(), "/exp/");
    assert_eq!(
        next_text(&mut etcd).await,
        "reset[127.0.0.1:2001@/exp/live]"
    );

    // The "dead" server: its own runtime and client, dropped with the registration still
    // in place (no revoke), as when a process is killed.
    let endpoints = cluster.endpoints();
    let registered = Instant::now();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let client = Client::connect(endpoints, Some(options())).await.unwrap();
            let dead = Registration::register(
                client,
                "/exp/dead",
                &EndpointValue::new("127.0.0.1:2002").unwrap(),
                ttl,
            )
            .await
            .unwrap();
            std::mem::forget(dead);
        });
        // Dropping the runtime ends the keep-alive task.
    })
    .join()
    .unwrap();
    assert_eq!(next_text(&mut etcd).await, "+127.0.0.1:2002@/exp/dead w=1");
    assert_eq!(next_text(&mut etcd).await, "-127.0.0.1:2002@/exp/dead");
    let lived = registered.elapsed();
    assert!(
        lived >= Duration::from_millis(1900),
        "the dead server's key went after {lived:?}, before its TTL of {ttl:?}"
    );
    // etcd checks for expired leases every half second or so: well within 3 s more.
    assert!(
        lived <= ttl + Duration::from_secs(3),
        "the dead server's key outlived its TTL of {ttl:?}: {lived:?}"
    );
    // The live one outlived the same TTL, renewed by its task.
    let mut check = client.clone();
    let left = check
        .lease_time_to_live(live.lease_id(), None)
        .await
        .unwrap()
        .ttl();
    assert!(left > 0, "the live registration's lease has {left} s left");
    assert_eq!(check.get("/exp/live", None).await.unwrap().kvs().len(), 1);
    live.shutdown().await.unwrap();
    assert_eq!(next_text(&mut etcd).await, "-127.0.0.1:2001@/exp/live");
}

/// The revisions the source's watch needs are compacted while it lags (it is not polled
/// between its list and its watch): it reports the compaction, lists again, sends only the
/// differences, and watches on from there.
#[tokio::test]
async fn compaction_while_the_watch_lags() {
    let Some((_cluster, mut client, mut etcd)) = one_member(
        "compaction_while_the_watch_lags",
        "/cmp/",
        &[("/cmp/a", "127.0.0.1:3001"), ("/cmp/b", "127.0.0.1:3002")],
    )
    .await
    else {
        return;
    };
    put(&mut client, "/cmp/c", "127.0.0.1:3003").await;
    client.delete("/cmp/a", None).await.unwrap();
    let revision = put(&mut client, "/cmp/d", "127.0.0.1:3004").await;
    client.compact(revision, None).await.unwrap();

    let error = next(&mut etcd).await.unwrap_err();
    assert!(
        matches!(error, EtcdError::Compacted { compact_revision, .. } if compact_revision == revision),
        "{error}"
    );
    // Removals first, then insertions in key order.
    assert_eq!(next_text(&mut etcd).await, "-127.0.0.1:3001@/cmp/a");
    assert_eq!(next_text(&mut etcd).await, "+127.0.0.1:3003@/cmp/c w=1");
    assert_eq!(next_text(&mut etcd).await, "+127.0.0.1:3004@/cmp/d w=1");
    put(&mut client, "/cmp/e", "127.0.0.1:3005").await;
    assert_eq!(next_text(&mut etcd).await, "+127.0.0.1:3005@/cmp/e w=1");
}

/// A list that finds the prefix empty while the balancer has endpoints is an empty reset
/// (which the balancer ignores by default), and the next endpoints come as a whole reset.
#[tokio::test]
async fn a_list_that_finds_nothing_is_an_empty_reset() {
    let Some((_cluster, mut client, mut etcd)) = one_member(
        "a_list_that_finds_nothing_is_an_empty_reset",
        "/empty/",
        &[
            ("/empty/a", "127.0.0.1:3101"),
            ("/empty/b", "127.0.0.1:3102"),
        ],
    )
    .await
    else {
        return;
    };
    // While the source lags, everything goes and the history is compacted: it must list.
    // (A compaction at revision r keeps r itself, so one more write outside the prefix puts
    // the delete behind it.)
    client
        .delete("/empty/", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    let revision = put(&mut client, "/elsewhere", "x").await;
    client.compact(revision, None).await.unwrap();
    assert!(matches!(
        next(&mut etcd).await,
        Err(EtcdError::Compacted { .. })
    ));
    assert_eq!(next_text(&mut etcd).await, "reset[]");
    put(&mut client, "/empty/c", "127.0.0.1:3103").await;
    assert_eq!(next_text(&mut etcd).await, "reset[127.0.0.1:3103@/empty/c]");
    put(&mut client, "/empty/d", "127.0.0.1:3104").await;
    assert_eq!(next_text(&mut etcd).await, "+127.0.0.1:3104@/empty/d w=1");
}

/// A lease that ends behind the registration's back (revoked here; expired after a long
/// pause in real life) is noticed at the next renewal: the key is written again under a
/// new lease.
#[tokio::test]
async fn a_registration_whose_lease_ends_registers_again() {
    let Some(etcd) = etcd_or_skip("a_registration_whose_lease_ends_registers_again") else {
        return;
    };
    let cluster = Cluster::start(etcd, 1).await;
    let mut client = cluster.client().await;
    let mut etcd = source(client.clone(), "/again/");
    let registration = Registration::register(
        client.clone(),
        "/again/a",
        &EndpointValue::new("127.0.0.1:3201").unwrap(),
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    assert_eq!(next_text(&mut etcd).await, "reset[127.0.0.1:3201@/again/a]");
    let first = registration.lease_id();
    client.lease_revoke(first).await.unwrap();
    assert_eq!(next_text(&mut etcd).await, "-127.0.0.1:3201@/again/a");
    // Renewals come every TTL/3: the key is back within about 0.7 s.
    assert_eq!(next_text(&mut etcd).await, "+127.0.0.1:3201@/again/a w=1");
    // The task stores the new lease's id once its put has returned, which may be just
    // after the watch delivered the put.
    let deadline = Instant::now() + WAIT;
    while registration.lease_id() == first {
        assert!(Instant::now() < deadline, "the lease id did not change");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    registration.shutdown().await.unwrap();
    assert_eq!(next_text(&mut etcd).await, "-127.0.0.1:3201@/again/a");
}

/// etcd is killed and started again: the source reports errors and removes nothing while
/// it is down, then lists again and sends only what changed.
#[tokio::test]
async fn etcd_restart_keeps_the_set_and_resumes() {
    let Some((mut cluster, client, mut etcd)) = one_member(
        "etcd_restart_keeps_the_set_and_resumes",
        "/rs/",
        &[("/rs/a", "127.0.0.1:4001"), ("/rs/b", "127.0.0.1:4002")],
    )
    .await
    else {
        return;
    };
    // A server's registration, which must outlive the restart.
    let ttl = Duration::from_secs(2);
    let c = Registration::register(
        client.clone(),
        "/rs/c",
        &EndpointValue::new("127.0.0.1:4003").unwrap(),
        ttl,
    )
    .await
    .unwrap();
    assert_eq!(next_text(&mut etcd).await, "+127.0.0.1:4003@/rs/c w=1");

    cluster.kill(0);
    // The lost watch, then at least two failed lists (retried with backoff): errors only.
    for _ in 0..3 {
        let item = next(&mut etcd).await;
        assert!(item.is_err(), "while etcd is down: {}", describe(&item));
    }
    cluster.restart(0).await;
    let mut writer = Client::connect([cluster.endpoint(0)], Some(options()))
        .await
        .unwrap();
    put(&mut writer, "/rs/d", "127.0.0.1:4004").await;
    writer.delete("/rs/a", None).await.unwrap();

    // Whether they come from the list after the restart or from the new watch, the two
    // changes come once each, and nothing else does.
    let mut changes = Vec::new();
    let mut errors = 0;
    while changes.len() < 2 {
        match next(&mut etcd).await {
            Ok(change) => changes.push(describe(&Ok(change))),
            Err(_) => errors += 1,
        }
    }
    changes.sort();
    assert_eq!(
        changes,
        ["+127.0.0.1:4004@/rs/d w=1", "-127.0.0.1:4001@/rs/a"]
    );
    put(&mut writer, "/rs/e", "127.0.0.1:4005").await;
    loop {
        match next(&mut etcd).await {
            Ok(change) => {
                assert_eq!(describe(&Ok(change)), "+127.0.0.1:4005@/rs/e w=1");
                break;
            }
            Err(_) => errors += 1,
        }
    }
    // etcd restarts every lease's countdown when it starts; the registration's task must
    // have reconnected and renewed it, or its key goes within the TTL. What is to be shown
    // is that the key outlives a TTL, so this waits out time itself (the remaining TTL etcd
    // reports is in whole seconds, too coarse to see a renewal of a 2 s lease): 1.5 TTLs
    // in which the source passes on errors only, then the shutdown's removal comes.
    let quiet = Instant::now() + ttl * 3 / 2;
    while let Ok(item) = tokio::time::timeout_at(quiet.into(), etcd.next()).await {
        let item = item.expect("the source ended");
        assert!(item.is_err(), "after the restart: {}", describe(&item));
        errors += 1;
    }
    c.shutdown().await.unwrap();
    assert_eq!(next_text(&mut etcd).await, "-127.0.0.1:4003@/rs/c");
    eprintln!("errors after the restart: {errors}");
}

/// Keeps retrying a write through elections (each try bounded by 2 s).
async fn retry<T, F: std::future::Future<Output = Result<T, etcd_client::Error>>>(
    mut op: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Ok(t)) = tokio::time::timeout(Duration::from_secs(2), op()).await {
            return t;
        }
        assert!(Instant::now() < deadline, "etcd accepted no write for 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a reader of the source saw: the changes in order, and the errors.
type ReaderLog = (Vec<String>, usize);

/// Reads `etcd` into a mirror of the set, checking each change as it comes: no second
/// reset, no insert of a key already there, no remove of one absent, and, once the first
/// reset arrived, never an empty set. Publishes the mirror after each change; returns
/// when the receiving side is gone (and one more change arrives).
fn spawn_reader(
    mut etcd: impl Stream<Item = EtcdChange> + Send + Unpin + 'static,
) -> (
    tokio::task::JoinHandle<ReaderLog>,
    tokio::sync::watch::Receiver<BTreeMap<String, String>>,
) {
    let (tx, rx) = tokio::sync::watch::channel(BTreeMap::<String, String>::new());
    let reader = tokio::spawn(async move {
        let mut mirror: BTreeMap<String, String> = BTreeMap::new();
        let (mut log, mut errors, mut seeded) = (Vec::new(), 0, false);
        while let Some(item) = etcd.next().await {
            match item {
                Ok(Change::Reset(list)) => {
                    assert!(!seeded, "a second reset: {list:?}");
                    seeded = true;
                    for e in list {
                        mirror.insert(e.key.key().to_string(), e.key.addr().to_string());
                    }
                    log.push("reset".to_string());
                }
                Ok(Change::Insert(e)) => {
                    let (key, addr) = (e.key.key().to_string(), e.key.addr().to_string());
                    assert!(
                        mirror.insert(key.clone(), addr).is_none(),
                        "{key} inserted twice"
                    );
                    log.push(format!("+{key}"));
                }
                Ok(Change::Remove(k)) => {
                    assert!(
                        mirror.remove(k.key()).is_some(),
                        "{} removed while absent",
                        k.key()
                    );
                    log.push(format!("-{}", k.key()));
                }
                Err(_) => errors += 1,
            }
            assert!(
                !seeded || !mirror.is_empty(),
                "the set was emptied; changes: {log:?}"
            );
            if tx.send(mirror.clone()).is_err() {
                break;
            }
        }
        (log, errors)
    });
    (reader, rx)
}

/// Three members; the leader is killed while endpoints are added and removed, and started
/// again once the writes are done. Two readers: one whose client knows every member (its
/// watch moves to a member that still has a leader; its client requires one, so a member
/// that lost it cancels the watch), and one that knows only the leader, so that the kill
/// surely breaks its watch: it must report errors, keep its set while the member is down,
/// and catch up once it is back. Both must end with exactly the endpoints written, having
/// inserted and removed each once, and the set they describe is never empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_while_endpoints_change() {
    let Some(etcd) = etcd_or_skip("leader_killed_while_endpoints_change") else {
        return;
    };
    let mut cluster = Cluster::start(etcd, 3).await;
    let writer = cluster.client().await;
    let base: Vec<String> = (0..10).map(|i| format!("/cl/k{i}")).collect();
    for (i, key) in base.iter().enumerate() {
        retry(|| {
            let (key, value) = (key.clone(), format!("127.0.0.1:{}", 5000 + i));
            let mut w = writer.clone();
            async move { w.put(key, value, None).await }
        })
        .await;
    }

    let leader = cluster.leader().await;
    let connect = |endpoints: Vec<String>| async move {
        Client::connect(endpoints, Some(options().with_require_leader(true)))
            .await
            .unwrap()
    };
    let (all_reader, mut all_rx) = spawn_reader(source(connect(cluster.endpoints()).await, "/cl/"));
    let (leader_reader, mut leader_rx) = spawn_reader(source(
        connect(vec![cluster.endpoint(leader)]).await,
        "/cl/",
    ));
    all_rx.wait_for(|m| m.len() == base.len()).await.unwrap();
    leader_rx.wait_for(|m| m.len() == base.len()).await.unwrap();

    // Twenty additions and five removals, the leader killed after the sixth addition.
    let mut expected: BTreeMap<String, String> = base
        .iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), format!("127.0.0.1:{}", 5000 + i)))
        .collect();
    let mut before_kill = BTreeMap::new();
    for i in 0..20 {
        let (key, value) = (format!("/cl/a{i:02}"), format!("127.0.0.1:{}", 6000 + i));
        retry(|| {
            let (key, value, mut w) = (key.clone(), value.clone(), writer.clone());
            async move { w.put(key, value, None).await }
        })
        .await;
        expected.insert(key, value);
        if let Some(key) = base.get(i).filter(|_| i < 5) {
            retry(|| {
                let (key, mut w) = (key.clone(), writer.clone());
                async move { w.delete(key, None).await }
            })
            .await;
            expected.remove(key);
        }
        if i == 6 {
            // The leader-only reader has seen everything so far before the kill, so what
            // it holds while the member is down is exactly this set.
            leader_rx.wait_for(|m| *m == expected).await.unwrap();
            before_kill = expected.clone();
            cluster.kill(leader);
        }
    }
    let caught_up = |rx: &mut tokio::sync::watch::Receiver<BTreeMap<String, String>>| {
        let mut rx = rx.clone();
        let expected = expected.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|m| *m == expected))
                .await
                .is_ok()
        }
    };
    assert!(
        caught_up(&mut all_rx).await,
        "the source's set is {:?}, expected {:?}",
        *all_rx.borrow(),
        expected
    );
    // The leader-only reader cannot reach etcd: it keeps the set it had.
    assert_eq!(
        *leader_rx.borrow(),
        before_kill,
        "the set changed while etcd was away"
    );
    cluster.restart(leader).await;
    assert!(
        caught_up(&mut leader_rx).await,
        "after the restart the source's set is {:?}, expected {:?}",
        *leader_rx.borrow(),
        expected
    );
    drop((all_rx, leader_rx));
    // One more change wakes the readers, which then see their channels closed and return.
    retry(|| {
        let mut w = writer.clone();
        async move { w.put("/cl/z", "127.0.0.1:7000", None).await }
    })
    .await;
    for (name, reader) in [
        ("every member", all_reader),
        ("the leader only", leader_reader),
    ] {
        let (log, errors) = tokio::time::timeout(WAIT, reader).await.unwrap().unwrap();
        // Each addition and removal exactly once (the reader checked there was no other).
        let inserts = log.iter().filter(|l| l.starts_with("+/cl/a")).count();
        let removes = log.iter().filter(|l| l.starts_with('-')).count();
        assert_eq!((inserts, removes), (20, 5), "{name}: {log:?}");
        eprintln!(
            "leader m{leader} killed; the reader of {name} saw {errors} error(s) and {} changes",
            log.len()
        );
        if name == "the leader only" {
            assert!(
                errors >= 1,
                "the watch on the killed member reported no error"
            );
        }
    }
}

/// A live watch whose reader stalls while etcd writes on: once the watch's buffers are
/// full etcd sets it aside, and a compaction in the meantime cancels it with the
/// compacted revision. The source reports it, lists again and ends with the same set as
/// etcd, each key inserted once.
#[tokio::test]
async fn compaction_during_a_stalled_watch() {
    let Some((_cluster, mut client, mut etcd)) = one_member(
        "compaction_during_a_stalled_watch",
        "/big/",
        &[("/big/base", "127.0.0.1:3300")],
    )
    .await
    else {
        return;
    };
    // A change seen through the watch: it is running.
    put(&mut client, "/big/first", "127.0.0.1:3301").await;
    assert_eq!(next_text(&mut etcd).await, "+127.0.0.1:3301@/big/first w=1");

    // The source is not polled while 24 MB of endpoints are written and compacted away;
    // listing them again takes two pages.
    let padding = "x".repeat(40 * 1024);
    let mut revision = 0;
    let n = 600;
    for i in 0..n {
        let value = format!(
            r#"{{"addr":"127.0.0.1:{}","labels":{{"pad":"{padding}"}}}}"#,
            10_000 + i
        );
        revision = put(&mut client, &format!("/big/k{i:03}"), &value).await;
    }
    client.compact(revision, None).await.unwrap();

    let mut inserted = std::collections::BTreeSet::new();
    let mut compacted = false;
    while inserted.len() < n {
        match next(&mut etcd).await {
            Ok(Change::Insert(e)) => {
                assert!(inserted.insert(e.key.key().to_string()), "{} twice", e.key);
            }
            Err(EtcdError::Compacted { .. }) => compacted = true,
            other => panic!("unexpected {}", describe(&other)),
        }
    }
    eprintln!("compacted: {compacted}");
    assert!(compacted, "the stalled watch was not compacted");
}

/// Through a real balancer: while etcd is down the balancer counts discovery errors and
/// keeps every endpoint (requests still go to both), and after etcd is back it applies the
/// change made meanwhile.
#[tokio::test]
async fn a_balancer_keeps_its_endpoints_while_etcd_is_down() {
    use tower::{Service, ServiceExt};
    use tower_lb::classify::ErrorsAsFailures;
    use tower_lb::strategy::RoundRobin;
    use tower_lb::Balance;

    let Some(binary) = etcd_or_skip("a_balancer_keeps_its_endpoints_while_etcd_is_down") else {
        return;
    };
    let mut cluster = Cluster::start(binary, 1).await;
    let mut client = cluster.client().await;
    put(&mut client, "/bal/a", "127.0.0.1:5101").await;
    put(&mut client, "/bal/b", "127.0.0.1:5102").await;
    let discovery = Etcd::prefix(client.clone(), "/bal/")
        .request_timeout(Duration::from_secs(1))
        .backoff(Duration::from_millis(50), Duration::from_millis(500));
    let mut balance = Balance::builder()
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .build_with(discovery, |key: &EtcdKey| {
            let addr = key.addr().to_string();
            tower::service_fn(move |()| {
                let addr = addr.clone();
                async move { Ok::<_, std::io::Error>(addr) }
            })
        })
        .unwrap();
    let addrs = |balance: &Balance<EtcdKey, _, RoundRobin, ErrorsAsFailures>| {
        let mut addrs: Vec<String> = balance
            .endpoints()
            .into_iter()
            .map(|e| e.key.addr().to_string())
            .collect();
        addrs.sort();
        addrs
    };
    let eventually = |what: &'static str| {
        let deadline = Instant::now() + WAIT;
        move || assert!(Instant::now() < deadline, "{what} within {WAIT:?}")
    };
    let check = eventually("both endpoints");
    while addrs(&balance) != ["127.0.0.1:5101", "127.0.0.1:5102"] {
        check();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    cluster.kill(0);
    let check = eventually("discovery errors counted");
    while balance.discovery_stats().errors < 2 {
        check();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(addrs(&balance), ["127.0.0.1:5101", "127.0.0.1:5102"]);
    let mut answered = Vec::new();
    for _ in 0..4 {
        answered.push(balance.ready().await.unwrap().call(()).await.unwrap());
    }
    answered.sort();
    assert_eq!(
        answered,
        [
            "127.0.0.1:5101",
            "127.0.0.1:5101",
            "127.0.0.1:5102",
            "127.0.0.1:5102"
        ]
    );

    cluster.restart(0).await;
    let mut writer = Client::connect([cluster.endpoint(0)], Some(options()))
        .await
        .unwrap();
    writer.delete("/bal/a", None).await.unwrap();
    let check = eventually("the removal after the restart");
    while addrs(&balance) != ["127.0.0.1:5102"] {
        check();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = balance.discovery_stats();
    assert!(stats.errors >= 2, "{stats:?}");
    assert!(stats.last_error.is_some(), "{stats:?}");
}
