//! Ten thousand idle connections on the smol server (`flowee-cli serve`, its own process),
//! each pinging once a second: the server's memory per connection and its CPU.
//!
//! Ignored by default (it opens 10,000 sockets and takes about half a minute):
//!
//! ```text
//! cargo test --release -p flowee-cli --test idle_connections -- --ignored --nocapture
//! ```
//!
//! Targets: at most 24 KiB of server RSS per connection, at most 10% of one core. Linux only
//! (it spreads the clients over loopback addresses and reads the server's `/proc`).
#![cfg(target_os = "linux")]

mod common;

use common::{Server, connect_from, raise_fd_limit, read_within};
use flowee_proto::frame::{PING_FRAME, PONG_FRAME};
use smol::io::AsyncWriteExt;
use std::net::{Ipv4Addr, SocketAddr};
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
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());

    let (rss_after, cpu, open) = smol::block_on(async {
        let mut clients = Vec::with_capacity(CONNECTIONS);
        let connected = Instant::now();
        for i in 0..CONNECTIONS {
            let ip = Ipv4Addr::new(127, 2, (i / 250) as u8, (i % 250 + 1) as u8);
            // Pings spread evenly over the second.
            let offset = PING_INTERVAL * (i % 1000) as u32 / 1000;
            clients.push(smol::spawn(pinger(
                server.addr,
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
            "\n{} connections up in {:.1} s",
            counts.connected.load(Ordering::SeqCst),
            connected.elapsed().as_secs_f64()
        );
        // Buffers used while connecting are given back after two idle seconds.
        smol::Timer::after(Duration::from_secs(5)).await;
        let rss_after = server.rss_kib();
        let (user_before, system_before) = server.cpu_split_secs();
        let pongs_before = counts.pongs.load(Ordering::SeqCst);
        let t = Instant::now();
        smol::Timer::after(Duration::from_secs(10)).await;
        let (user, system) = server.cpu_split_secs();
        let secs = t.elapsed().as_secs_f64();
        let cpu = ((user - user_before) / secs, (system - system_before) / secs);
        let pongs = counts.pongs.load(Ordering::SeqCst) - pongs_before;
        println!(
            "{pongs} pongs in {:.1} s ({:.0}/s)",
            t.elapsed().as_secs_f64(),
            pongs as f64 / t.elapsed().as_secs_f64()
        );
        let open = server.open_connections();
        stop.store(true, Ordering::SeqCst);
        for c in clients {
            c.await;
        }
        (rss_after, cpu, open)
    });

    let per_connection = (rss_after.saturating_sub(rss_before)) as f64 / CONNECTIONS as f64;
    println!("\n| figure | value |\n|---|---|");
    println!("| idle connections, pinging every second | {open} |");
    println!(
        "| server RSS before / with the connections | {:.1} / {:.1} MiB |",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0
    );
    println!("| server RSS per connection (target ≤ 24 KiB) | {per_connection:.1} KiB |");
    let (user, system) = cpu;
    let cpu = user + system;
    // On loopback the kernel time includes delivering each pong to the client and waking it.
    println!(
        "| server CPU, 10,000 pings/s (target ≤ 10%) | {:.1}% of one core ({:.1}% user, {:.1}% kernel) |",
        cpu * 100.0,
        user * 100.0,
        system * 100.0
    );
    let failed = counts.failed.load(Ordering::SeqCst);
    let closed = counts.closed.load(Ordering::SeqCst);
    assert_eq!(
        (failed, closed),
        (0, 0),
        "connections that failed or were closed"
    );
    assert_eq!(open, CONNECTIONS);
    assert!(
        per_connection <= MAX_KIB_PER_CONNECTION,
        "{per_connection:.1} KiB per connection"
    );
    assert!(cpu <= MAX_CPU, "{:.1}% CPU", cpu * 100.0);
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
