//! A custom discovery source: a file of addresses, watched for changes by polling its
//! modification time.
//!
//! ```text
//! cargo run --example custom_discovery
//! ```
//!
//! The file holds one `IP:PORT` per line (optionally followed by a weight; `#` starts a
//! comment). [`AddressFile`] implements [`Snapshots`]: each call waits until the file's
//! modification time (or length) changes, then lists every endpoint in it.
//! [`discover::from_snapshots`] turns consecutive lists into the few changes between them,
//! so unchanged endpoints keep their services and statistics. A line that does not parse
//! is logged and skipped; a file that cannot be read is an error, which keeps the last set.
//!
//! The example writes a temporary file, builds a balancer on it, edits the file twice, and
//! checks that the balancer's endpoint set follows; it exits 0 on success.
//!
//! To write a source without the snapshot helper, implement `Stream<Item = Result<Change<K,
//! S>, E>>` directly: every such stream is a [`Discover`](tower_lb::discover::Discover).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tower_lb::classify::ErrorsAsFailures;
use tower_lb::discover::{self, Snapshots};
use tower_lb::error::BoxError;
use tower_lb::strategy::RoundRobin;
use tower_lb::{Balance, Endpoint};

/// Lists the endpoints in a file whenever it changes.
struct AddressFile {
    path: PathBuf,
    poll: Duration,
    /// The modification time and length last listed; `None` before the first listing.
    seen: Option<(SystemTime, u64)>,
}

impl Snapshots<SocketAddr, ()> for AddressFile {
    type Error = std::io::Error;

    async fn snapshot(&mut self) -> Result<Vec<Endpoint<SocketAddr, ()>>, std::io::Error> {
        // Wait for a change (the first call answers at once).
        loop {
            let meta = tokio::fs::metadata(&self.path).await?;
            let stamp = (meta.modified()?, meta.len());
            if self.seen != Some(stamp) {
                self.seen = Some(stamp);
                break;
            }
            tokio::time::sleep(self.poll).await;
        }
        let text = tokio::fs::read_to_string(&self.path).await?;
        let mut endpoints = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let addr = words.next().and_then(|a| a.parse::<SocketAddr>().ok());
            let weight = match words.next() {
                None => Some(1),
                Some(w) => w.parse::<u32>().ok(),
            };
            match (addr, weight) {
                (Some(addr), Some(weight)) => {
                    endpoints.push(Endpoint::new(addr, ()).with_weight(weight))
                }
                _ => eprintln!("{}:{}: skipped {line:?}", self.path.display(), n + 1),
            }
        }
        Ok(endpoints)
    }
}

async fn wait_for(
    balance: &Balance<SocketAddr, SocketAddr, RoundRobin, ErrorsAsFailures>,
    want: &[(&str, u32)],
) -> Result<(), BoxError> {
    let want: BTreeMap<SocketAddr, u32> = want
        .iter()
        .map(|(a, w)| (a.parse().expect("address"), *w))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now: BTreeMap<SocketAddr, u32> = balance
            .endpoints()
            .into_iter()
            .map(|e| (e.key, e.weight))
            .collect();
        if now == want {
            println!("endpoints: {now:?}");
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("endpoints are {now:?}, expected {want:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let path = std::env::temp_dir().join(format!("tower-lb-upstreams-{}.txt", std::process::id()));
    std::fs::write(&path, "10.0.0.1:80\n10.0.0.2:80 3  # a bigger one\n")?;
    let source = AddressFile {
        path: path.clone(),
        poll: Duration::from_millis(50),
        seen: None,
    };
    // The "service" of each endpoint is its address; a real one would be a client.
    let balance = Balance::builder()
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .build_with(discover::from_snapshots(source), |addr: &SocketAddr| *addr)?;

    let result = async {
        wait_for(&balance, &[("10.0.0.1:80", 1), ("10.0.0.2:80", 3)]).await?;
        // Edits are picked up; lines that do not parse are skipped. The length changes
        // with each edit, so even a coarse mtime clock sees it.
        std::fs::write(&path, "10.0.0.2:80 3\n10.0.0.3:80\nnot an address\n")?;
        wait_for(&balance, &[("10.0.0.2:80", 3), ("10.0.0.3:80", 1)]).await?;
        std::fs::write(&path, "10.0.0.3:80 2\n")?;
        wait_for(&balance, &[("10.0.0.3:80", 2)]).await?;
        // A file that vanishes is an error: the last set stays.
        std::fs::remove_file(&path)?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        wait_for(&balance, &[("10.0.0.3:80", 2)]).await?;
        println!(
            "discovery errors so far: {}",
            balance.discovery_stats().errors
        );
        Ok::<_, BoxError>(())
    }
    .await;
    let _ = std::fs::remove_file(&path);
    result?;
    println!("custom discovery: ok");
    Ok(())
}
