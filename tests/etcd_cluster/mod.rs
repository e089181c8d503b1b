//! Real etcd members on loopback for the etcd tests: ephemeral ports, a temporary data
//! directory, readiness by polling the client.
//!
//! The `etcd` binary comes from `$TOWER_LB_ETCD` or the `PATH` (Debian: `etcd-server`).
//! [`etcd_or_skip`] returns `None` with a message when it is missing, unless `CI` is set:
//! then it panics, so CI never skips these tests silently.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};

/// The `etcd` binary, or `None` (with a message) when it is missing outside CI.
pub fn etcd_or_skip(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("TOWER_LB_ETCD")
        .map(PathBuf::from)
        .or_else(|| {
            let path = std::env::var_os("PATH")?;
            std::env::split_paths(&path)
                .map(|dir| dir.join("etcd"))
                .find(|p| p.is_file())
        });
    if found.is_none() {
        // CI=1 or CI=true (as CI services set it); CI=0, CI=false or an empty CI is not CI.
        let ci = std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"));
        if ci {
            panic!(
                "{test}: the etcd binary is missing and CI is set; install it \
                 (apt-get install etcd-server) or set TOWER_LB_ETCD"
            );
        }
        eprintln!(
            "SKIPPED {test}: the etcd binary is missing (apt-get install etcd-server, or set \
             TOWER_LB_ETCD); CI runs this test"
        );
    }
    found
}

/// Client options for the tests: short connect timeout and keep-alive, so that a killed
/// member is noticed quickly.
pub fn options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(500))
        .with_keep_alive(Duration::from_millis(500), Duration::from_millis(500))
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// A cluster of etcd members on 127.0.0.1, killed and its data removed on drop.
pub struct Cluster {
    binary: PathBuf,
    dir: PathBuf,
    initial_cluster: String,
    token: String,
    members: Vec<Member>,
}

/// The ports handed out in this process, so that two clusters never get the same one.
static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

/// Distinct free loopback ports for etcd, below the kernel's range of ephemeral ports
/// (32768 and up on Linux), so that no outgoing connection of a test running meanwhile
/// takes one between the check here and etcd's bind (or a member's restart on the same
/// port); each is checked free by binding it, and never handed out twice in a process.
fn free_ports(n: usize) -> Vec<u16> {
    use std::hash::{BuildHasher, Hasher};
    let mut handed_out = HANDED_OUT.lock().unwrap();
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let mut state = hasher.finish();
    let mut ports = Vec::with_capacity(n);
    while ports.len() < n {
        // xorshift over a random start: ports 20000 to 31999.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let port = 20_000 + (state % 12_000) as u16;
        if handed_out.contains(&port) || TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        handed_out.push(port);
        ports.push(port);
    }
    ports
}

impl Cluster {
    /// Starts `n` members and waits until each answers a linearizable read (so the
    /// cluster has a leader).
    pub async fn start(binary: PathBuf, n: usize) -> Cluster {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let unique = format!(
            "tower-lb-etcd-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(&unique);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ports = free_ports(2 * n);
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            binary,
            dir,
            initial_cluster,
            token: unique,
            members,
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        for i in 0..n {
            cluster.wait_ready(i).await;
        }
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let m = &self.members[i];
        let data = self.dir.join(&m.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", m.name)))
            .unwrap();
        let client_url = format!("http://127.0.0.1:{}", m.client_port);
        let peer_url = format!("http://127.0.0.1:{}", m.peer_port);
        let child = Command::new(&self.binary)
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            // Fast elections on loopback: 50 ms heartbeats, 500 ms election timeout.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.members[i].child = Some(child);
    }

    /// Polls member `i` until it answers a linearizable read (at most 30 s).
    async fn wait_ready(&mut self, i: usize) {
        let endpoint = self.endpoint(i);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let attempt = async {
                let mut client = Client::connect([&endpoint], Some(options())).await?;
                client.get("readiness", None).await
            };
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), attempt).await {
                return;
            }
            // A member that exited (a port taken after all, a bad flag) fails at once,
            // with its log, rather than after the 30 s.
            if let Some(Ok(Some(status))) = self.members[i].child.as_mut().map(Child::try_wait) {
                panic!(
                    "etcd member {i} exited ({status}); its log is in {}",
                    self.dir.display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "etcd member {i} not ready after 30 s; see {}",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client_port)
    }

    /// Every member's client URL (running or not).
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// A client of every member.
    pub async fn client(&self) -> Client {
        Client::connect(self.endpoints(), Some(options()))
            .await
            .expect("etcd client")
    }

    /// Kills member `i` at once (SIGKILL), as a crash would.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data and waits until it is ready.
    pub async fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_ready(i).await;
    }

    /// The index of the current leader, asked of the running members.
    pub async fn leader(&self) -> usize {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                continue;
            }
            let Ok(mut client) = Client::connect([self.endpoint(i)], Some(options())).await else {
                continue;
            };
            let Ok(Ok(status)) =
                tokio::time::timeout(Duration::from_secs(1), client.status()).await
            else {
                continue;
            };
            let me = status.header().map(|h| h.member_id());
            if me == Some(status.leader()) {
                return i;
            }
        }
        panic!("no running member says it is the leader");
    }

    /// Where the members keep their data and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
