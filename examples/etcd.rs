//! Servers that register themselves in etcd, and a client that balances over them while
//! one of them stops.
//!
//! ```text
//! etcd --data-dir /tmp/tower-lb-etcd &          # Debian: apt-get install etcd-server
//! cargo run --features etcd --example etcd
//! ETCD_ENDPOINTS=http://10.0.0.1:2379,http://10.0.0.2:2379 cargo run --features etcd --example etcd
//! ```
//!
//! Three servers on 127.0.0.1 (a tiny line protocol: each answers with its name) register
//! under `/tower-lb-example/<pid>/<addr>` with a 5 s lease. The client discovers them with
//! [`Etcd::prefix`] and sends 30 requests round robin; then server `c` deregisters
//! ([`Registration::shutdown`]) before it stops accepting, and 30 more requests go to `a`
//! and `b` only. Exits with status 0 when every request succeeded and the shares are as
//! described, 1 otherwise, and 2 (with instructions) when etcd cannot be reached.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tower::{Service, ServiceExt};
use tower_lb::classify::ErrorsAsFailures;
use tower_lb::discover::etcd::etcd_client::{Client, ConnectOptions};
use tower_lb::discover::etcd::{EndpointValue, Etcd, EtcdKey, Registration};
use tower_lb::strategy::RoundRobin;
use tower_lb::Balance;

/// One server: answers each connection's line with its name, registered in etcd.
struct Server {
    name: &'static str,
    accept: JoinHandle<()>,
    registration: Registration,
}

async fn start_server(name: &'static str, client: &Client, prefix: &str) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = stream.split();
                let mut line = String::new();
                if BufReader::new(read).read_line(&mut line).await.is_ok() {
                    let _ = write.write_all(name.as_bytes()).await;
                }
            });
        }
    });
    // Register only once the listener accepts: clients may call as soon as they see it.
    let value = EndpointValue::new(addr.to_string()).unwrap();
    let registration = Registration::register(
        client.clone(),
        format!("{prefix}{addr}"),
        &value,
        Duration::from_secs(5),
    )
    .await
    .expect("register in etcd");
    println!(
        "server {name} on {addr}, registered with lease {:x}",
        registration.lease_id()
    );
    Server {
        name,
        accept,
        registration,
    }
}

/// One request: a line to the server at `addr`, its name back.
async fn ask(addr: Arc<str>) -> Result<String, std::io::Error> {
    let mut stream = TcpStream::connect(&*addr).await?;
    stream.write_all(b"who are you?\n").await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    Ok(answer)
}

async fn connect(endpoints: &[String]) -> Result<Client, Box<dyn std::error::Error>> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
    let mut client = Client::connect(endpoints, Some(options)).await?;
    tokio::time::timeout(Duration::from_secs(2), client.status()).await??;
    Ok(client)
}

#[tokio::main]
async fn main() {
    let endpoints: Vec<String> = std::env::var("ETCD_ENDPOINTS")
        .unwrap_or_else(|_| "http://127.0.0.1:2379".into())
        .split(',')
        .map(str::to_string)
        .collect();
    let client = match connect(&endpoints).await {
        Ok(client) => client,
        Err(e) => {
            eprintln!("cannot reach etcd at {endpoints:?}: {e}");
            eprintln!("start a local one (Debian: apt-get install etcd-server) with");
            eprintln!("    etcd --data-dir /tmp/tower-lb-etcd");
            eprintln!("(it listens on 127.0.0.1:2379), or set ETCD_ENDPOINTS=http://host:port,...");
            std::process::exit(2);
        }
    };
    let prefix = format!("/tower-lb-example/{}/", std::process::id());
    let mut servers = Vec::new();
    for name in ["a", "b", "c"] {
        servers.push(start_server(name, &client, &prefix).await);
    }

    let balance = Balance::builder()
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .build_with(Etcd::prefix(client.clone(), &prefix), |key: &EtcdKey| {
            Line {
                addr: key.addr().into(),
            }
        })
        .unwrap();
    wait_for(&balance, 3).await;
    let before = send(&balance, 30).await;

    // Server c leaves: deregister first, so that clients stop sending, then stop accepting.
    let c = servers.pop().unwrap();
    c.registration.shutdown().await.expect("deregister c");
    wait_for(&balance, 2).await;
    c.accept.abort();
    println!("server {} deregistered and stopped", c.name);
    let after = send(&balance, 30).await;

    let stats = balance.discovery_stats();
    println!("before: {before:?}\nafter:  {after:?}\ndiscovery: {stats:?}");
    for server in servers {
        server.registration.shutdown().await.expect("deregister");
        server.accept.abort();
    }
    let expected_before: BTreeMap<String, usize> = [("a", 10), ("b", 10), ("c", 10)]
        .map(|(k, v)| (k.to_string(), v))
        .into();
    let expected_after: BTreeMap<String, usize> = [("a", 15), ("b", 15)]
        .map(|(k, v)| (k.to_string(), v))
        .into();
    if before == expected_before && after == expected_after {
        println!("ok: every request answered; c got none after it left");
    } else {
        eprintln!("FAILED: expected {expected_before:?} then {expected_after:?}");
        std::process::exit(1);
    }
}

/// The balancer of this example.
type Lb = Balance<EtcdKey, Line, RoundRobin, ErrorsAsFailures>;

/// The service for one server: asks the server at `addr`.
#[derive(Clone)]
struct Line {
    addr: Arc<str>,
}

impl Service<()> for Line {
    type Response = String;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<String, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), std::io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (): ()) -> Self::Future {
        Box::pin(ask(self.addr.clone()))
    }
}

/// Waits (up to 10 s) until the balancer has `n` endpoints.
async fn wait_for(balance: &Lb, n: usize) {
    for _ in 0..1000 {
        if balance.endpoints().len() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("FAILED: the balancer never had {n} endpoints");
    std::process::exit(1);
}

/// Sends `n` requests one after the other; counts the answers by server name.
async fn send(balance: &Lb, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        match balance.clone().oneshot(()).await {
            Ok(name) => *counts.entry(name).or_default() += 1,
            Err(e) => {
                eprintln!("FAILED: a request failed: {e}");
                std::process::exit(1);
            }
        }
    }
    counts
}
