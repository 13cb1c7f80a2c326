//! Side-by-side comparison, in one run on one machine, of the same workloads through:
//!
//! - **flowee**: `flowee-cli serve --echo` (the smol server, its own process) and the smol
//!   client of `flowee-cli bench` (this process); for round trips also the std adapter at
//!   both ends (`serve --echo --adapter std`, `bench --adapter std`);
//! - **tokio-util**: a tokio + tokio-util `LengthDelimitedCodec` echo server and client, each on
//!   its own current-thread runtime and thread (the Rust user's usual choice);
//! - **raw TCP**: a blocking ping-pong of 100-byte buffers, each end on its own thread (for
//!   round trips: the floor any protocol stack sits on).
//!
//! Every end has its own thread, TCP_NODELAY is on, and each figure is the median of five
//! runs; the runs of the stacks compared in a row take turns. It prints each figure and the
//! ratio flowee / baseline.
//!
//! A round trip costs what its wake-ups cost, and those depend on where the two ends run: a
//! wake-up across cores costs about 25 µs on a 2-vCPU VM, one on the same core a few. So the
//! round trips are measured with both stacks' ends placed the same way, pinned (on Linux):
//! client and server on two different cores, then both on one core. The throughput workloads
//! are left to the scheduler, as a user's program would be.
//!
//! ```text
//! cargo bench -p flowee-cli --bench compare
//! FLOWEE_BENCH_SCALE=0.1 cargo bench -p flowee-cli --bench compare   # a quick look
//! ```

use bytes::Bytes;
use flowee_cli::bench::{Adapter, Bench, Outcome};
use futures_util::{SinkExt, StreamExt};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

#[path = "../tests/common/mod.rs"]
mod common;

const RUNS: usize = 5;

#[global_allocator]
static ALLOC: flowee_sim::counting::Counting = flowee_sim::counting::Counting;

fn main() {
    let scale: f64 = std::env::var("FLOWEE_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let n = |count: u64| ((count as f64 * scale) as u64).max(1);
    let server = common::Server::start(&["--echo"]);
    let std_server = common::Server::start(&["--echo", "--adapter", "std"]);
    println!("flowee-cli bench compare: median of {RUNS} runs\n");
    println!("| workload | flowee | tokio-util | raw TCP | flowee / baseline |");
    println!("|---|---|---|---|---|");

    let small = n(1_000_000);
    let mut allocations = 0;
    let [(ours, _), (theirs, _)] = alternating([
        &mut || {
            let before = flowee_sim::counting::allocations();
            let ours = flowee_throughput(server.addr, small, 100, 500);
            allocations += flowee_sim::counting::allocations() - before;
            (ours, 0.0)
        },
        &mut || (tokio_throughput(small, 100, 500), 0.0),
    ]);
    let per_message = allocations as f64 / (small * RUNS as u64) as f64;
    println!(
        "| {small} × 100 B echo, 500 in flight (msgs/s) | {} | {} | | {:.2}× tokio-util |",
        millions(ours),
        millions(theirs),
        ours / theirs
    );

    let large = n(200);
    let mib = (1 << 20) as f64;
    let [(ours, _), (theirs, _)] = alternating([
        &mut || {
            (
                flowee_throughput(server.addr, large, 1 << 20, 16) * mib,
                0.0,
            )
        },
        &mut || (tokio_throughput(large, 1 << 20, 16) * mib, 0.0),
    ]);
    println!(
        "| {large} × 1 MiB echo, 16 in flight (bytes/s) | {:.2} GB/s | {:.2} GB/s | | {:.2}× tokio-util |",
        ours / 1e9,
        theirs / 1e9,
        ours / theirs
    );

    let trips = n(20_000);
    let servers = [
        ("smol", Adapter::Smol, server.addr, server.pid()),
        ("std", Adapter::Std, std_server.addr, std_server.pid()),
    ];
    let mut pinned = false;
    for (ends, cores) in placements() {
        if let Some((client_core, server_core)) = cores {
            pinned = true;
            place::pin_process(std::process::id(), &[client_core]);
            for (.., pid) in servers {
                place::pin_process(pid, &[server_core]);
            }
        }
        let [(raw_median, raw_p99), smol, std] = alternating([
            &mut || raw_round_trip(trips, cores.map(|c| c.1)),
            &mut || flowee_round_trip(servers[0].2, trips, servers[0].1),
            &mut || flowee_round_trip(servers[1].2, trips, servers[1].1),
        ]);
        for ((name, ..), (ours_median, ours_p99)) in servers.iter().zip([smol, std]) {
            println!(
                "| {trips} × 100 B round trip, {name} adapter, {ends}, median (p99) | {:.1} µs ({:.1}) | | {:.1} µs ({:.1}) | {:.2}× raw TCP |",
                ours_median,
                ours_p99,
                raw_median,
                raw_p99,
                ours_median / raw_median
            );
        }
    }
    if pinned {
        let all = place::allowed_cpus();
        place::pin_process(std::process::id(), &all);
        for (.., pid) in servers {
            place::pin_process(pid, &all);
        }
    }
    println!(
        "\nflowee client heap allocations per 100 B message echoed (connect and setup included): \
         {per_message:.4}"
    );
}

/// The placements of a round trip's two ends: a label and (client core, server core), or
/// none where this process cannot choose its cores.
fn placements() -> Vec<(&'static str, Option<(usize, usize)>)> {
    let cpus = if place::can_pin() {
        place::allowed_cpus()
    } else {
        Vec::new()
    };
    match cpus[..] {
        [] => vec![("ends placed by the scheduler", None)],
        [only] => vec![("ends on one core", Some((only, only)))],
        [first, second, ..] => vec![
            ("ends on two cores", Some((first, second))),
            ("ends on one core", Some((first, first))),
        ],
    }
}

fn millions(per_s: f64) -> String {
    format!("{:.2} M", per_s / 1e6)
}

/// Runs each workload [`RUNS`] times, taking turns, so that a slow spell of this shared
/// machine falls on all of them alike; returns the median of each workload's first and
/// second figure.
fn alternating<const N: usize>(mut runs: [&mut dyn FnMut() -> (f64, f64); N]) -> [(f64, f64); N] {
    let mut results: [Vec<(f64, f64)>; N] = std::array::from_fn(|_| Vec::new());
    for _ in 0..RUNS {
        for (run, result) in runs.iter_mut().zip(results.iter_mut()) {
            result.push(run());
        }
    }
    results.map(|runs| {
        let pick = |f: fn(&(f64, f64)) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[RUNS / 2]
        };
        (pick(|r| r.0), pick(|r| r.1))
    })
}

// -----------------------------------------------------------------------------------------
// flowee: `flowee-cli serve --echo` in its own process (started as the tests start it), the
// `bench` client here

fn flowee(addr: SocketAddr, bench: &Bench) -> Outcome {
    let run = match bench.adapter {
        Adapter::Std => flowee_cli::bench::run_std,
        Adapter::Smol => flowee_cli::bench::run_smol,
    };
    run(&addr.to_string(), bench).expect("bench runs")
}

/// Messages per second.
fn flowee_throughput(addr: SocketAddr, count: u64, size: usize, window: usize) -> f64 {
    let bench = Bench {
        count,
        size,
        window,
        latency: false,
        requests: false,
        adapter: Adapter::Smol,
        timeout: Duration::from_secs(600),
    };
    match flowee(addr, &bench) {
        Outcome::Throughput(t) => t.msgs_per_s(),
        other => panic!("unexpected {other}"),
    }
}

/// Median and p99 round trip in µs.
fn flowee_round_trip(addr: SocketAddr, count: u64, adapter: Adapter) -> (f64, f64) {
    let bench = Bench {
        count,
        size: 100,
        window: 1,
        latency: true,
        requests: false,
        adapter,
        timeout: Duration::from_secs(600),
    };
    match flowee(addr, &bench) {
        Outcome::Latency(l) => (
            l.quantile(0.5).as_secs_f64() * 1e6,
            l.quantile(0.99).as_secs_f64() * 1e6,
        ),
        other => panic!("unexpected {other}"),
    }
}

// -----------------------------------------------------------------------------------------
// tokio-util: LengthDelimitedCodec echo

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("a tokio runtime")
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(2 << 20)
        .new_codec()
}

/// Messages per second through a tokio-util echo, `window` in flight.
fn tokio_throughput(count: u64, size: usize, window: usize) -> f64 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        runtime().block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let (socket, _) = listener.accept().await.unwrap();
            socket.set_nodelay(true).unwrap();
            let (r, w) = socket.into_split();
            let mut read = FramedRead::new(r, codec());
            let mut write = FramedWrite::new(w, codec());
            // Echo each frame; `send_all` flushes whenever the input runs dry.
            let mut frames = (&mut read).map(|f| f.map(|b| b.freeze()));
            let _ = write.send_all(&mut frames).await;
        })
    });
    let body = Bytes::from((0..size).map(|i| i as u8).collect::<Vec<u8>>());
    let elapsed = runtime().block_on(async move {
        let socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        socket.set_nodelay(true).unwrap();
        let (r, w) = socket.into_split();
        let mut read = FramedRead::new(r, codec());
        let mut write = FramedWrite::new(w, codec());
        let permits = Arc::new(tokio::sync::Semaphore::new(window));
        let start = Instant::now();
        let sender = {
            let permits = permits.clone();
            let body = body.clone();
            async move {
                for _ in 0..count {
                    if permits.available_permits() == 0 {
                        SinkExt::<Bytes>::flush(&mut write).await.unwrap();
                    }
                    permits.acquire().await.unwrap().forget();
                    write.feed(body.clone()).await.unwrap();
                }
                SinkExt::<Bytes>::flush(&mut write).await.unwrap();
                write
            }
        };
        let receiver = async {
            for _ in 0..count {
                let frame = read.next().await.unwrap().unwrap();
                assert_eq!(frame.len(), size);
                permits.add_permits(1);
            }
        };
        let (write, ()) = tokio::join!(sender, receiver);
        let elapsed = start.elapsed();
        drop(write);
        elapsed
    });
    server.join().unwrap();
    count as f64 / elapsed.as_secs_f64()
}

// -----------------------------------------------------------------------------------------
// raw TCP: blocking 100-byte ping-pong

/// Median and p99 round trip in µs, the server's thread on `server_core` if given (the
/// client's is this thread).
fn raw_round_trip(count: u64, server_core: Option<usize>) -> (f64, f64) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        if let Some(core) = server_core {
            place::pin_thread(core);
        }
        let (mut s, _) = listener.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let mut buf = [0u8; 100];
        while s.read_exact(&mut buf).is_ok() {
            if s.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_nodelay(true).unwrap();
    let out: Vec<u8> = (0..100).map(|i| i as u8).collect();
    let mut back = [0u8; 100];
    let mut rtts = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let t = Instant::now();
        c.write_all(&out).unwrap();
        c.read_exact(&mut back).unwrap();
        rtts.push(t.elapsed());
    }
    drop(c);
    server.join().unwrap();
    rtts.sort_unstable();
    let at = |q: f64| rtts[((rtts.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6;
    (at(0.5), at(0.99))
}

// -----------------------------------------------------------------------------------------
// placement: which cores the ends of a round trip run on

#[cfg(target_os = "linux")]
mod place {
    use rustix::thread::{CpuSet, Pid, sched_getaffinity, sched_setaffinity};

    /// The cores this process may run on (empty if that cannot be read).
    pub(crate) fn allowed_cpus() -> Vec<usize> {
        match sched_getaffinity(None) {
            Ok(set) => (0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Restricts thread `tid` (none: the calling thread) to `cpus`.
    fn pin(tid: Option<Pid>, cpus: &[usize]) -> rustix::io::Result<()> {
        let mut set = CpuSet::new();
        for &cpu in cpus {
            set.set(cpu);
        }
        sched_setaffinity(tid, &set)
    }

    /// Whether the threads of a process can be listed (in `/proc`), so that all are pinned.
    pub(crate) fn can_pin() -> bool {
        std::fs::read_dir("/proc/self/task").is_ok()
    }

    /// Runs the calling thread on `cpu` only.
    pub(crate) fn pin_thread(cpu: usize) {
        pin(None, &[cpu]).expect("the thread may run on its core");
    }

    /// Restricts every thread of process `pid` to `cpus`. Threads it starts later inherit the
    /// set from the thread that starts them.
    pub(crate) fn pin_process(pid: u32, cpus: &[usize]) {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/PID/task");
        for task in tasks.flatten() {
            let tid = task.file_name().to_str().and_then(|t| t.parse().ok());
            if let Some(tid) = tid.and_then(Pid::from_raw) {
                // A thread may end while this runs; the others are pinned.
                let _ = pin(Some(tid), cpus);
            }
        }
    }
}

/// Elsewhere the scheduler places the ends.
#[cfg(not(target_os = "linux"))]
mod place {
    pub(crate) fn allowed_cpus() -> Vec<usize> {
        Vec::new()
    }
    pub(crate) fn can_pin() -> bool {
        false
    }
    pub(crate) fn pin_thread(_cpu: usize) {}
    pub(crate) fn pin_process(_pid: u32, _cpus: &[usize]) {}
}
