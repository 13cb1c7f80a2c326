//! Ten thousand idle connections on the smol server (`flowee-cli serve`, its own process),
//! each pinging once a second: the server's memory per connection and its CPU, and the CPU
//! of a bare tokio ping answerer under the same load in the same run (the machine's floor).
//!
//! Ignored by default (it opens 10,000 sockets twice and takes about a minute):
//!
//! ```text
//! cargo test --release -p flowee-cli --test idle_connections -- --ignored --nocapture
//! ```
//!
//! Targets: at most 24 KiB of server RSS per connection, at most 10% of one core. Linux only
//! (it spreads the clients over loopback addresses and reads the server's `/proc`).
#![cfg(target_os = "linux")]

mod common;

use common::{Server, connect_from, cpu_split_secs, raise_fd_limit, read_within};
use flowee_proto::frame::{PING_FRAME, PONG_FRAME};
use smol::io::AsyncWriteExt;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const CONNECTIONS: usize = 10_000;
const PING_INTERVAL: Duration = Duration::from_secs(1);
const MAX_KIB_PER_CONNECTION: f64 = 24.0;
const MAX_CPU: f64 = 0.10;

#[test]
#[ignore = "opens 10,000 connections; see the file's doc for the command"]
fn ten_thousand_idle_connections() {
    raise_fd_limit(CONNECTIONS as u64 + 1000);
    let server = Server::start(&["--max-connections", "20000"]);
    // Let it settle before the baseline.
    std::thread::sleep(Duration::from_millis(500));
    let rss_before = server.rss_kib();
    let mut rss_after = 0;
    let mut open = 0;
    let ours = drive(server.addr, &|| server.cpu_split_secs(), &mut || {
        rss_after = server.rss_kib();
        open = server.open_connections();
    });
    drop(server.stop());
    // The same load against the least a server can do: a tokio task per connection that
    // answers each ping with a pong, on one thread. What that costs is this machine's floor
    // (loopback delivery, wake-ups, epoll), whatever the protocol stack.
    let mut floor_process = start_floor();
    let floor_stat = format!("/proc/{}/stat", floor_process.0.id());
    let floor = drive(floor_process.1, &|| cpu_split_secs(&floor_stat), &mut || {});
    let _ = floor_process.0.kill();
    let _ = floor_process.0.wait();

    let per_connection = (rss_after.saturating_sub(rss_before)) as f64 / CONNECTIONS as f64;
    println!("\n| figure | value |\n|---|---|");
    println!("| idle connections, pinging every second | {open} |");
    println!(
        "| server RSS before / with the connections | {:.1} / {:.1} MiB |",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0
    );
    println!("| server RSS per connection (target ≤ 24 KiB) | {per_connection:.1} KiB |");
    // On loopback the kernel time includes delivering each pong to the client and waking it.
    println!(
        "| server CPU, 10,000 pings/s (target ≤ 10%) | {} |",
        ours.describe()
    );
    println!(
        "| the floor: a bare tokio ping answerer, same load | {} |",
        floor.describe()
    );
    println!(
        "| flowee / floor | {:.2}× |",
        ours.cpu() / floor.cpu().max(f64::EPSILON)
    );
    for load in [&ours, &floor] {
        assert_eq!(
            (load.failed, load.closed),
            (0, 0),
            "connections that failed or were closed"
        );
    }
    assert_eq!(open, CONNECTIONS);
    assert!(
        per_connection <= MAX_KIB_PER_CONNECTION,
        "{per_connection:.1} KiB per connection"
    );
    assert!(ours.cpu() <= MAX_CPU, "{:.1}% CPU", ours.cpu() * 100.0);
}

/// What one load measured.
struct Load {
    /// User and kernel CPU, in cores.
    cpu: (f64, f64),
    pongs_per_s: f64,
    failed: u64,
    closed: u64,
}

impl Load {
    fn cpu(&self) -> f64 {
        self.cpu.0 + self.cpu.1
    }

    fn describe(&self) -> String {
        format!(
            "{:.1}% of one core ({:.1}% user, {:.1}% kernel), {:.0} pongs/s",
            self.cpu() * 100.0,
            self.cpu.0 * 100.0,
            self.cpu.1 * 100.0,
            self.pongs_per_s
        )
    }
}

/// Opens [`CONNECTIONS`] pinging clients to `addr`, lets them settle, calls `settled`, then
/// measures `cpu` (user and kernel seconds so far) over ten seconds, and closes them.
fn drive(addr: SocketAddr, cpu: &dyn Fn() -> (f64, f64), settled: &mut dyn FnMut()) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let (cpu, pongs_per_s) = smol::block_on(async {
        let mut clients = Vec::with_capacity(CONNECTIONS);
        let connected = Instant::now();
        for i in 0..CONNECTIONS {
            let ip = Ipv4Addr::new(127, 2, (i / 250) as u8, (i % 250 + 1) as u8);
            // Pings spread evenly over the second.
            let offset = PING_INTERVAL * (i % 1000) as u32 / 1000;
            clients.push(smol::spawn(pinger(
                addr,
                ip,
                offset,
                stop.clone(),
                counts.clone(),
            )));
            if i % 200 == 199 {
                // Let the server accept each batch (its listen backlog is finite).
                while counts.connected.load(Ordering::SeqCst) < (i + 1) as u64 * 9 / 10 {
                    smol::Timer::after(Duration::from_millis(5)).await;
                }
            }
        }
        while counts.connected.load(Ordering::SeqCst) + counts.failed.load(Ordering::SeqCst)
            < CONNECTIONS as u64
        {
            smol::Timer::after(Duration::from_millis(50)).await;
        }
        println!(
            "\n{} connections to {addr} up in {:.1} s",
            counts.connected.load(Ordering::SeqCst),
            connected.elapsed().as_secs_f64()
        );
        // Buffers used while connecting are given back after two idle seconds.
        smol::Timer::after(Duration::from_secs(5)).await;
        settled();
        let (user_before, system_before) = cpu();
        let pongs_before = counts.pongs.load(Ordering::SeqCst);
        let t = Instant::now();
        smol::Timer::after(Duration::from_secs(10)).await;
        let (user, system) = cpu();
        let secs = t.elapsed().as_secs_f64();
        let pongs = counts.pongs.load(Ordering::SeqCst) - pongs_before;
        stop.store(true, Ordering::SeqCst);
        for c in clients {
            c.await;
        }
        (
            ((user - user_before) / secs, (system - system_before) / secs),
            pongs as f64 / secs,
        )
    });
    Load {
        cpu,
        pongs_per_s,
        failed: counts.failed.load(Ordering::SeqCst),
        closed: counts.closed.load(Ordering::SeqCst),
    }
}

/// Set in the environment of the floor's process.
const FLOOR_ENV: &str = "FLOWEE_IDLE_FLOOR";

/// Starts [`floor_server_process`] as a process of its own (this test binary again, so that its
/// sockets and CPU are its own); returns it and its address.
fn start_floor() -> (Child, SocketAddr) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "floor_server_process",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(FLOOR_ENV, "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let addr = stderr.lines().map_while(Result::ok).find_map(|line| {
        line.strip_prefix("floor listening on ")
            .and_then(|addr| addr.parse().ok())
    });
    match addr {
        Some(addr) => (child, addr),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the floor server did not start");
        }
    }
}

/// The floor for [`ten_thousand_idle_connections`], which starts it in a process of its own:
/// a current-thread tokio runtime that accepts connections and answers every ping with a pong,
/// nothing else. Does nothing when run on its own.
#[test]
#[ignore = "the floor server's process; ten_thousand_idle_connections starts it"]
fn floor_server_process() {
    if std::env::var_os(FLOOR_ENV).is_none() {
        return;
    }
    raise_fd_limit(CONNECTIONS as u64 + 1000);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    eprintln!("floor listening on {}", listener.local_addr().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let _ = socket.set_nodelay(true);
                let mut buf = [0u8; 64];
                let mut unanswered = 0;
                while let Ok(n @ 1..) = socket.read(&mut buf).await {
                    unanswered += n;
                    while unanswered >= PING_FRAME.len() {
                        unanswered -= PING_FRAME.len();
                        if socket.write_all(&PONG_FRAME).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
}

#[derive(Default)]
struct Counts {
    connected: AtomicU64,
    failed: AtomicU64,
    closed: AtomicU64,
    pongs: AtomicU64,
}

/// One idle client: a ping every second, pongs counted, until `stop`.
async fn pinger(
    addr: SocketAddr,
    ip: Ipv4Addr,
    offset: Duration,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) {
    let mut stream = match connect_from(ip, addr).await {
        Ok(s) => s,
        Err(_) => {
            counts.failed.fetch_add(1, Ordering::SeqCst);
            return;
        }
    };
    counts.connected.fetch_add(1, Ordering::SeqCst);
    let mut buf = [0u8; 64];
    let mut next = Instant::now() + offset;
    while !stop.load(Ordering::Relaxed) {
        let wait = next.saturating_duration_since(Instant::now());
        let read = read_within(&mut stream, &mut buf, wait).await;
        match read {
            Some(Ok(0)) | Some(Err(_)) => {
                counts.closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
            Some(Ok(n)) => {
                counts
                    .pongs
                    .fetch_add((n / PONG_FRAME.len()) as u64, Ordering::Relaxed);
            }
            None => {
                if stream.write_all(&PING_FRAME).await.is_err() {
                    counts.closed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                next += PING_INTERVAL;
            }
        }
    }
}
