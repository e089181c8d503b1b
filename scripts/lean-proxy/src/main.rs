//! The leanest HTTP/1.1 reverse proxy on tokio this project could write: a benchmark
//! reference for `scripts/bench-proxy.sh` (the `lean-floor` row), not part of tower-lb and
//! not fit to serve anyone.
//!
//! It shows how fast a Rust proxy can be on the benchmark's traffic when it does almost
//! nothing but the unavoidable socket work: worker threads, each a single-threaded
//! runtime with its own `SO_REUSEPORT` listener; one task per client connection that reads
//! the request head (httparse), writes it to a pooled upstream connection (round robin, no
//! balancer), reads the response and writes it back, with no task switch in between. It
//! handles only `Content-Length` bodies, has no timeouts, limits, health checks, retries or
//! error pages, and drops the connection on anything unexpected.
//!
//! ```text
//! lean-proxy WORKERS LISTEN UPSTREAM...
//! ```

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What one worker thread shares between its connections.
struct Worker {
    upstreams: Vec<SocketAddr>,
    /// Idle connections per upstream.
    pools: Vec<RefCell<Vec<TcpStream>>>,
    next: Cell<usize>,
}

fn main() -> io::Result<()> {
    let usage = || io::Error::other("usage: lean-proxy WORKERS LISTEN UPSTREAM...");
    let mut args = std::env::args().skip(1);
    let workers: usize = args.next().and_then(|w| w.parse().ok()).ok_or_else(usage)?;
    let addrs: Vec<SocketAddr> = args
        .map(|a| a.parse().map_err(|e| io::Error::other(format!("{a}: {e}"))))
        .collect::<io::Result<_>>()?;
    let (listen, upstreams) = match addrs.split_first() {
        Some((listen, upstreams)) if !upstreams.is_empty() => (*listen, upstreams.to_vec()),
        _ => return Err(usage()),
    };
    let mut threads = Vec::new();
    for _ in 0..workers.max(1) {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(listen),
            socket2::Type::STREAM,
            None,
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.bind(&listen.into())?;
        socket.listen(1024)?;
        socket.set_nonblocking(true)?;
        let listener: std::net::TcpListener = socket.into();
        let upstreams = upstreams.clone();
        threads.push(std::thread::spawn(move || run(listener, upstreams)));
    }
    for thread in threads {
        thread
            .join()
            .map_err(|_| io::Error::other("a worker panicked"))??;
    }
    Ok(())
}

fn run(listener: std::net::TcpListener, upstreams: Vec<SocketAddr>) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = TcpListener::from_std(listener)?;
        let worker = Rc::new(Worker {
            pools: upstreams.iter().map(|_| RefCell::default()).collect(),
            upstreams,
            next: Cell::new(0),
        });
        loop {
            let (stream, peer) = listener.accept().await?;
            stream.set_nodelay(true)?;
            tokio::task::spawn_local(serve(worker.clone(), stream, peer));
        }
    })
}

/// The end of a message head in `buf`, if it is all there.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Reads from `stream` into `buf` until it holds at least `len` bytes.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, len: usize) -> io::Result<()> {
    while buf.len() < len {
        if read_some(stream, buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

async fn read_some(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn content_length(headers: &[httparse::Header<'_>]) -> io::Result<usize> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map_or(Ok(0), |h| {
            std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| io::ErrorKind::InvalidData.into())
        })
}

async fn serve(worker: Rc<Worker>, mut client: TcpStream, peer: SocketAddr) -> io::Result<()> {
    let (mut buf, mut out, mut response) = (Vec::new(), Vec::new(), Vec::new());
    let forwarded_for = peer.ip().to_string();
    loop {
        // The request head, rewritten: hop-by-hop headers out, X-Forwarded-* in.
        let end = loop {
            if let Some(end) = head_end(&buf) {
                break end;
            }
            if read_some(&mut client, &mut buf).await? == 0 {
                return Ok(());
            }
        };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        request
            .parse(&buf[..end])
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        let body = content_length(request.headers)?;
        out.clear();
        out.extend_from_slice(request.method.unwrap_or("GET").as_bytes());
        out.push(b' ');
        out.extend_from_slice(request.path.unwrap_or("/").as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for header in request.headers.iter() {
            let name = header.name;
            if name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("keep-alive") {
                continue;
            }
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(header.value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"x-forwarded-for: ");
        out.extend_from_slice(forwarded_for.as_bytes());
        out.extend_from_slice(b"\r\nx-forwarded-proto: http\r\n\r\n");
        fill(&mut client, &mut buf, end + body).await?;
        out.extend_from_slice(&buf[end..end + body]);
        buf.drain(..end + body);

        // Round robin over pooled connections.
        let index = worker.next.get() % worker.upstreams.len();
        worker.next.set(index + 1);
        let pooled = worker.pools[index].borrow_mut().pop();
        let mut upstream = match pooled {
            Some(upstream) => upstream,
            None => {
                let upstream = TcpStream::connect(worker.upstreams[index]).await?;
                upstream.set_nodelay(true)?;
                upstream
            }
        };
        upstream.write_all(&out).await?;

        // The response, passed through as it came.
        response.clear();
        let end = loop {
            if read_some(&mut upstream, &mut response).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if let Some(end) = head_end(&response) {
                break end;
            }
        };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut headers);
        parsed
            .parse(&response[..end])
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        let body = content_length(parsed.headers)?;
        fill(&mut upstream, &mut response, end + body).await?;
        client.write_all(&response[..end + body]).await?;
        worker.pools[index].borrow_mut().push(upstream);
    }
}
