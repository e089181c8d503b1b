//! Subsetting adapters (`discover::subset`) over a channel source, end to end with a real
//! balancer: the balancer holds exactly the subset, follows its changes with the least
//! churn, and gets weights and metadata through.

mod common;

use std::collections::BTreeSet;

use common::{keys, send, settle, stat, stats_of, Backend};
use tower_lb::classify::ErrorsAsFailures;
use tower_lb::discover::subset::{
    self, Aperture, Deterministic, Random, Ringsteady, Subsetting, FULL_SHARE,
};
use tower_lb::discover::{self, Change};
use tower_lb::strategy::RoundRobin;
use tower_lb::{Balance, Endpoint, Metadata};

const NAMES: [&str; 10] = ["b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8", "b9"];

fn set<'a>(keys: impl IntoIterator<Item = &'a &'static str>) -> BTreeSet<&'static str> {
    keys.into_iter().copied().collect()
}

#[tokio::test]
async fn random_subset_over_a_channel_follows_changes_with_least_churn() {
    let (tx, rx) = discover::channel();
    let (source, handle) = subset::subset(rx, Random::with_seed(3, 7).unwrap());
    let mut balance = Balance::builder()
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .build(source)
        .unwrap();
    for name in NAMES {
        tx.insert(name, Backend::new(name)).unwrap();
    }
    settle().await;
    let stats = handle.stats();
    let members = set(stats.keys());
    assert_eq!(members.len(), 3);
    assert_eq!(
        set(&keys(&balance)),
        members,
        "the balancer holds the subset"
    );
    assert_eq!(stats.backends, 10);

    // Requests reach members only.
    for _ in 0..30 {
        let answer = send(&mut balance).await.unwrap();
        assert!(members.contains(answer), "{answer} is not a member");
    }

    // Removing a backend outside the subset changes nothing.
    let outsider = NAMES.iter().find(|n| !members.contains(*n)).unwrap();
    tx.remove(*outsider).unwrap();
    settle().await;
    assert_eq!(set(&keys(&balance)), members);
    assert_eq!(handle.stats().left, 0);

    // Removing a member replaces it with exactly one other backend.
    let gone = *members.iter().next().unwrap();
    tx.remove(gone).unwrap();
    settle().await;
    let after = set(handle.stats().keys());
    assert_eq!(set(&keys(&balance)), after);
    assert_eq!(
        members.difference(&after).copied().collect::<Vec<_>>(),
        [gone]
    );
    assert_eq!(after.difference(&members).count(), 1);
    assert_eq!((handle.stats().joined, handle.stats().left), (4, 1));

    // Weight and metadata of a member pass through; its place and statistics stay.
    let member = *after.iter().next().unwrap();
    tx.insert_with(member, Backend::new(member), 5, Metadata::zone("z"))
        .unwrap();
    settle().await;
    let stats = stats_of(&balance, &member);
    assert_eq!(stats.weight, 5);
    assert_eq!(stats.metadata.zone.as_deref(), Some("z"));
}

#[tokio::test]
async fn aperture_edges_reach_the_balancer_as_scaled_weights() {
    // 3 clients, 4 backends, aperture 2: client 2's slice [2/3, 4/3) takes a third of b2,
    // all of b3 and b0, a third of b1.
    let (tx, rx) = discover::channel();
    let algorithm = Aperture::new(2, 3).unwrap().aperture(2).unwrap();
    let (source, handle) = subset::subset(rx, algorithm);
    let balance = Balance::builder()
        .strategy(RoundRobin::new())
        .build(source)
        .unwrap();
    let list = NAMES[..4]
        .iter()
        .map(|&n| Endpoint::new(n, Backend::new(n)).with_weight(2))
        .collect();
    tx.reset(list).unwrap();
    settle().await;
    let mut weights = stat(&balance, |e| u64::from(e.weight));
    weights.sort();
    let full = u64::from(2 * FULL_SHARE);
    assert_eq!(
        weights,
        [("b0", full), ("b1", 66), ("b2", 66), ("b3", full)]
    );
    let members: Vec<(&str, u32)> = handle
        .stats()
        .members
        .iter()
        .map(|m| (m.key, m.weight))
        .collect();
    assert_eq!(members, [("b2", 66), ("b3", 200), ("b0", 200), ("b1", 66)]);
}

#[tokio::test]
async fn deterministic_subsets_of_a_round_cover_the_backends_once() {
    let mut seen = Vec::new();
    for client in 0..5 {
        let (source, handle) = subset::subset(
            discover::static_list(NAMES.map(|n| (n, Backend::new(n)))),
            Deterministic::new(client, 2).unwrap(),
        );
        let balance = Balance::builder().build(source).unwrap();
        settle().await;
        let members = set(handle.stats().keys());
        assert_eq!(set(&keys(&balance)), members);
        seen.extend(members);
    }
    seen.sort();
    assert_eq!(seen, NAMES, "5 clients × 2 = one round over 10 backends");
}

#[tokio::test]
async fn errors_and_empty_resets_pass_through() {
    let changes: Vec<Result<Change<&'static str, u8>, &'static str>> = vec![
        Ok(Change::Reset(
            NAMES[..4].iter().map(|&n| Endpoint::new(n, 0)).collect(),
        )),
        Err("lookup failed"),
        Ok(Change::Reset(Vec::new())),
        Ok(Change::insert("b9", 0)),
    ];
    let (source, handle) = subset::subset(
        futures::stream::iter(changes),
        Random::with_seed(2, 1).unwrap(),
    );
    use futures::StreamExt;
    let out: Vec<String> = source
        .map(|c| match c {
            Ok(Change::Reset(v)) => format!("reset {}", v.len()),
            Ok(Change::Insert(e)) => format!("+{}", e.key),
            Ok(Change::Remove(k)) => format!("-{k}"),
            Err(e) => format!("err {e}"),
        })
        .collect()
        .await;
    // The first subset is a reset; the error comes after it; the empty reset is passed
    // on but the set stays, and the next subset (of b0 to b3 and b9) is a full reset.
    assert_eq!(out, ["reset 2", "err lookup failed", "reset 0", "reset 2"]);
    let stats = handle.stats();
    assert_eq!(stats.backends, 5);
    let names = ["b0", "b1", "b2", "b3", "b9"];
    let algorithm = Random::with_seed(2, 1).unwrap();
    let expected: Vec<&str> = algorithm
        .select(&names)
        .into_iter()
        .map(|(i, _)| names[i])
        .collect();
    assert_eq!(stats.keys().copied().collect::<Vec<_>>(), expected);
}

#[tokio::test]
async fn ringsteady_follows_the_ordinals_and_changes_one_member_at_most() {
    // Pods api-0 .. api-7 of a StatefulSet: points 0, 1/2, 1/4, 3/4, 1/8, 5/8, 3/8, 7/8,
    // so the ring reads 0, 4, 2, 6, 1, 5, 3, 7.
    const PODS: [&str; 9] = [
        "api-0.api:80",
        "api-1.api:80",
        "api-2.api:80",
        "api-3.api:80",
        "api-4.api:80",
        "api-5.api:80",
        "api-6.api:80",
        "api-7.api:80",
        "api-8.api:80",
    ];
    let (tx, rx) = discover::channel();
    let (source, handle) = subset::subset(rx, Ringsteady::new(3, 3).unwrap());
    let mut balance = Balance::builder()
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .build(source)
        .unwrap();
    for pod in &PODS[..8] {
        tx.insert(*pod, Backend::new(pod)).unwrap();
    }
    settle().await;
    // From 3/4 round the ring: api-3 (3/4), api-7 (7/8), api-0 (0, after wrapping).
    let members: Vec<&str> = handle.stats().keys().copied().collect();
    assert_eq!(members, ["api-3.api:80", "api-7.api:80", "api-0.api:80"]);
    assert_eq!(set(&keys(&balance)), set(&members));
    for _ in 0..9 {
        let answer = send(&mut balance).await.unwrap();
        assert!(members.contains(&answer), "{answer} is not a member");
    }
    // api-8 comes up at 1/16, between api-0 (0) and api-4 (1/8): outside this window.
    tx.insert(PODS[8], Backend::new(PODS[8])).unwrap();
    settle().await;
    assert_eq!(handle.stats().keys().copied().collect::<Vec<_>>(), members);
    // api-7 goes away: the next point round the ring, api-8 at 1/16, takes its place
    // after api-0.
    tx.remove("api-7.api:80").unwrap();
    settle().await;
    let after: Vec<&str> = handle.stats().keys().copied().collect();
    assert_eq!(after, ["api-3.api:80", "api-0.api:80", "api-8.api:80"]);
    assert_eq!(set(&keys(&balance)), set(&after));
    assert_eq!((handle.stats().joined, handle.stats().left), (4, 1));
}
