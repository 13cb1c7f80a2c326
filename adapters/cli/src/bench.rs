//! `bench`: echo throughput and round-trip latency against `flowee-cli serve --echo`, on the
//! smol or the std adapter.
//!
//! Echoes are taken by a [`Service`] on the client (no copy, no allocation per message): in
//! throughput mode it sends the next message as each echo comes back, keeping `window` in
//! flight; in latency mode one message is in flight and each round trip is timed. While more
//! than 64 KiB wait to be written, the next message is held back and a sender sends it
//! once the queue has drained (`Client::drain_to`), so the socket sets the pace and large
//! bodies do not pile up in memory (as a tokio-util `FramedWrite` waits in `poll_ready`).

use crate::net::Failure;
use event_listener::{Event, Listener};
use flowee_smol::{Header, Message, NodeConfig, Priority, Request, Responder, SendError, Service};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Which adapter a command runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adapter {
    /// `flowee-smol`.
    Smol,
    /// `flowee-std`.
    Std,
}

impl std::str::FromStr for Adapter {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "smol" => Ok(Adapter::Smol),
            "std" => Ok(Adapter::Std),
            _ => Err(format!("unknown adapter {s:?} (smol or std)")),
        }
    }
}

/// What to measure.
#[derive(Clone, Copy, Debug)]
pub struct Bench {
    /// Messages to echo.
    pub count: u64,
    /// Body size in bytes.
    pub size: usize,
    /// Messages in flight (throughput mode).
    pub window: usize,
    /// Time single round trips instead.
    pub latency: bool,
    /// Time `request` calls made one after another on the calling thread, outside the
    /// adapter's own threads and tasks, as an application makes them (round trips as in
    /// `latency`, through the request path).
    pub requests: bool,
    /// The client's adapter.
    pub adapter: Adapter,
    /// Give up after this long.
    pub timeout: Duration,
}

/// Echo throughput: `msgs_per_s=… MB_per_s=…` (MB of bodies, one way, 10^6 bytes).
#[derive(Clone, Copy, Debug)]
pub struct Throughput {
    /// Messages echoed.
    pub messages: u64,
    /// Body bytes echoed.
    pub bytes: u64,
    /// From the first send to the last echo.
    pub elapsed: Duration,
}

impl Throughput {
    /// Messages per second.
    pub fn msgs_per_s(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }

    /// Body megabytes (10^6 bytes) per second, one way.
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64()
    }
}

impl fmt::Display for Throughput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "msgs_per_s={:.0} MB_per_s={:.1}",
            self.msgs_per_s(),
            self.mb_per_s()
        )
    }
}

/// Round trips: `median_us=… p99_us=…`.
#[derive(Clone, Debug)]
pub struct Latency {
    /// Every round trip, sorted.
    pub sorted: Vec<Duration>,
}

impl Latency {
    /// The round trip at quantile `q` (0..=1).
    pub fn quantile(&self, q: f64) -> Duration {
        let last = self.sorted.len().saturating_sub(1);
        self.sorted
            .get(((last as f64) * q).round() as usize)
            .copied()
            .unwrap_or_default()
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        write!(
            f,
            "median_us={:.1} p99_us={:.1}",
            us(self.quantile(0.5)),
            us(self.quantile(0.99))
        )
    }
}

/// What a run measured.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// Throughput mode.
    Throughput(Throughput),
    /// Latency mode.
    Latency(Latency),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Throughput(t) => t.fmt(f),
            Outcome::Latency(l) => l.fmt(f),
        }
    }
}

/// The service id the benchmark's messages use (the echo server sends anything back).
pub const BENCH_SERVICE: i32 = 100;

/// Bytes queued on the client above which the next message waits for the socket to take
/// them (as a `Sink` waits in `poll_ready`) instead of piling up in memory.
const PACE: usize = 64 * 1024;

/// A request that fails this close to the end of the run failed because the run's time ran
/// out.
const RUN_END_SLACK: Duration = Duration::from_millis(50);

/// The most round trips the record makes room for up front: with a huge `--count` it grows
/// as round trips come, instead of asking for all its memory at the start.
const PREALLOCATED_ROUND_TRIPS: usize = 1 << 20;

/// Room for the round trips of `count` messages, up to [`PREALLOCATED_ROUND_TRIPS`].
fn round_trips(count: u64) -> Vec<Duration> {
    Vec::with_capacity(
        usize::try_from(count).map_or(PREALLOCATED_ROUND_TRIPS, |c| {
            c.min(PREALLOCATED_ROUND_TRIPS)
        }),
    )
}

/// The body every benchmark message carries: `size` bytes, byte i being i mod 256.
fn payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| i as u8).collect()
}

/// State shared by the client's echo handler and the code waiting for it.
struct Echoes {
    header: Header,
    body: Vec<u8>,
    count: u64,
    latency: bool,
    sent: AtomicU64,
    received: AtomicU64,
    /// Echoes whose body was not what was sent.
    wrong: AtomicU64,
    done: AtomicBool,
    finished: Event,
    /// Messages held back while more than `PACE` bytes waited to be written; the sender
    /// sends them as the queue drains.
    held: AtomicU64,
    /// Wakes the sender.
    resume: Event,
    /// Why the sender gave up.
    send_error: Mutex<Option<String>>,
    /// Latency mode: when the message in flight left, and the round trips so far.
    timing: Mutex<(Instant, Vec<Duration>)>,
}

impl Echoes {
    fn new(bench: &Bench) -> Arc<Echoes> {
        let count = bench.count;
        Arc::new(Echoes {
            header: Header::new(BENCH_SERVICE, 1),
            body: payload(bench.size),
            count,
            latency: bench.latency,
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            wrong: AtomicU64::new(0),
            done: AtomicBool::new(false),
            finished: Event::new(),
            held: AtomicU64::new(0),
            resume: Event::new(),
            send_error: Mutex::new(None),
            timing: Mutex::new((
                Instant::now(),
                if bench.latency {
                    round_trips(count)
                } else {
                    Vec::new()
                },
            )),
        })
    }

    fn message(&self) -> Message<'_> {
        Message::new(&self.header, &self.body)
    }

    /// How many to send before the first echo.
    fn initial(&self, window: usize) -> u64 {
        if self.latency {
            1
        } else {
            (window as u64).min(self.count)
        }
    }

    /// Takes the right to send one more message, if any are left to send.
    fn claim(&self) -> bool {
        self.sent
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| {
                (s < self.count).then_some(s + 1)
            })
            .is_ok()
    }

    fn finish(&self) {
        self.done.store(true, Ordering::SeqCst);
        self.finished.notify(usize::MAX);
        self.resume.notify(usize::MAX);
    }

    /// Holds back one claimed message for the sender.
    fn hold(&self) {
        self.held.fetch_add(1, Ordering::SeqCst);
        self.resume.notify(1);
    }

    /// What the sender does after sending a held message: false when it must stop.
    fn sent_held(&self, result: Result<(), SendError<Message<'_>>>) -> bool {
        match result {
            Ok(()) => {
                self.held.fetch_sub(1, Ordering::SeqCst);
                true
            }
            // Too many messages queued, however small: the sender waits for an empty queue.
            Err(SendError::QueueFull(_)) => true,
            // The run is over (a timeout closed the client under the sender): its outcome
            // says why, not this send.
            Err(_) if self.done.load(Ordering::SeqCst) => false,
            Err(e) => {
                *self
                    .send_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(e.to_string());
                self.finish();
                false
            }
        }
    }

    fn outcome(&self, elapsed: Duration) -> Result<Outcome, Failure> {
        if let Some(e) = self
            .send_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            return Err(Failure(format!("cannot send: {e}")));
        }
        let wrong = self.wrong.load(Ordering::SeqCst);
        if wrong > 0 {
            return Err(Failure(format!("{wrong} echoes differ from what was sent")));
        }
        let received = self.received.load(Ordering::SeqCst);
        if received < self.count {
            return Err(Failure(format!(
                "timed out: {received} of {} echoes came back",
                self.count
            )));
        }
        if self.latency {
            let mut timing = self.timing.lock().unwrap_or_else(PoisonError::into_inner);
            let mut sorted = std::mem::take(&mut timing.1);
            sorted.sort_unstable();
            Ok(Outcome::Latency(Latency { sorted }))
        } else {
            Ok(Outcome::Throughput(Throughput {
                messages: received,
                bytes: received * self.body.len() as u64,
                elapsed,
            }))
        }
    }
}

/// The client's handler for the echoes.
struct EchoHandler(Arc<Echoes>);

impl Service for EchoHandler {
    fn call(&self, request: &Request<'_>, out: &mut Responder<'_>) {
        let e = &*self.0;
        let body = request.message.body;
        // Length and both ends: enough to catch a wrong or cut message at no cost per byte.
        let intact = body.len() == e.body.len()
            && body.first() == e.body.first()
            && body.last() == e.body.last();
        if !intact {
            e.wrong.fetch_add(1, Ordering::Relaxed);
        }
        if e.latency {
            let mut timing = e.timing.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            let rtt = now - timing.0;
            timing.1.push(rtt);
            timing.0 = now;
        }
        let received = e.received.fetch_add(1, Ordering::Relaxed) + 1;
        if e.claim() && (out.queued() > PACE || out.reply(e.message()).is_err()) {
            e.hold();
        }
        if received >= e.count {
            e.finish();
        }
    }
}

fn bench_config() -> NodeConfig {
    let mut config = NodeConfig::default();
    // A benchmark run must not be cut short by a ping deadline on a busy machine.
    config.connection.ping_interval = Duration::from_secs(30);
    config
}

/// `bench` on the smol adapter.
///
/// The whole run is a task on smol's executor, next to the connection's task: a sender on
/// the calling thread would cost two cross-thread wake-ups per message (the echo waking the
/// sender, the sender waking the writer), each about 25 µs on these machines. The calling
/// thread only waits, and does not drive the reactor either, so one thread does it all.
/// `--requests` is the exception: it measures that very path, awaiting each request on the
/// calling thread (in `smol::block_on`, which drives the reactor while the thread waits).
pub fn run_smol(addr: &str, bench: &Bench) -> Result<Outcome, Failure> {
    if bench.requests {
        return smol::block_on(smol_requests(addr, bench));
    }
    let (addr, bench) = (addr.to_owned(), *bench);
    smol::future::block_on(smol::spawn(async move { smol_bench(&addr, &bench).await }))
}

async fn smol_bench(addr: &str, bench: &Bench) -> Result<Outcome, Failure> {
    use smol::future::FutureExt;
    let client = flowee_smol::Client::connect(addr, bench_config())
        .await
        .map_err(|e| Failure(format!("cannot connect to {addr}: {e}")))?;
    let (echoes, start) = start(
        bench,
        |handler| client.handle(BENCH_SERVICE, None, handler),
        |m| client.send(m, Priority::Normal).map_err(|e| e.to_string()),
    )?;
    let sender = async {
        let mut full = false;
        loop {
            event_listener::listener!(echoes.resume => listener);
            if echoes.done.load(Ordering::SeqCst) {
                break;
            }
            if echoes.held.load(Ordering::SeqCst) == 0 {
                listener.await;
                continue;
            }
            client.drain_to(if full { 0 } else { PACE }).await;
            let result = client.send(echoes.message(), Priority::Normal);
            full = matches!(result, Err(SendError::QueueFull(_)));
            if !echoes.sent_held(result) {
                break;
            }
        }
    };
    let finished = async {
        while !echoes.done.load(Ordering::SeqCst) {
            let listener = echoes.finished.listen();
            if echoes.done.load(Ordering::SeqCst) {
                break;
            }
            listener.await;
        }
    };
    finished
        .or(async {
            sender.await;
            std::future::pending().await
        })
        .or(async {
            smol::Timer::after(bench.timeout).await;
        })
        .await;
    let elapsed = start.elapsed();
    client.close().await;
    echoes.outcome(elapsed)
}

/// `bench --requests` on the smol adapter: awaited on the calling thread, while the
/// connection's task runs on smol's executor.
async fn smol_requests(addr: &str, bench: &Bench) -> Result<Outcome, Failure> {
    let client = flowee_smol::Client::connect(addr, bench_config())
        .await
        .map_err(|e| Failure(format!("cannot connect to {addr}: {e}")))?;
    let mut timed = Timed::new(bench);
    let run = async {
        for _ in 0..bench.count {
            let left = timed.left()?;
            let started = Instant::now();
            let reply = client.request(timed.message(), left).await;
            let body = reply.as_ref().map(|m| &m.body[..]);
            timed.record(started, body.map_err(|e| e.to_string()))?;
        }
        Ok(())
    };
    let result = run.await;
    // Closed on failure too, so the connection ends before this returns.
    client.close().await;
    result.map(|()| timed.outcome())
}

/// `bench --requests` on the std adapter.
fn std_requests(client: &flowee_std::Client, bench: &Bench) -> Result<Outcome, Failure> {
    let mut timed = Timed::new(bench);
    for _ in 0..bench.count {
        let left = timed.left()?;
        let started = Instant::now();
        let reply = client.request(timed.message(), left);
        let body = reply.as_ref().map(|m| &m.body[..]);
        timed.record(started, body.map_err(|e| e.to_string()))?;
    }
    Ok(timed.outcome())
}

/// Round trips of requests made one after another (`--requests`).
struct Timed {
    header: Header,
    body: Vec<u8>,
    count: u64,
    end: Instant,
    sorted: Vec<Duration>,
}

impl Timed {
    fn new(bench: &Bench) -> Self {
        Timed {
            header: Header::new(BENCH_SERVICE, 1),
            body: payload(bench.size),
            count: bench.count,
            end: Instant::now() + bench.timeout,
            sorted: round_trips(bench.count),
        }
    }

    fn message(&self) -> Message<'_> {
        Message::new(&self.header, &self.body)
    }

    /// The time left for the run.
    fn left(&self) -> Result<Duration, Failure> {
        let left = self.end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.timed_out());
        }
        Ok(left)
    }

    fn timed_out(&self) -> Failure {
        Failure(format!(
            "timed out: {} of {} requests answered",
            self.sorted.len(),
            self.count
        ))
    }

    /// Keeps the round trip of a request sent at `started`, if its reply is the echo.
    fn record(&mut self, started: Instant, reply: Result<&[u8], String>) -> Result<(), Failure> {
        let elapsed = started.elapsed();
        match reply {
            Ok(body) if body == self.body => {
                self.sorted.push(elapsed);
                Ok(())
            }
            Ok(_) => Err(Failure("an echo differs from what was sent".into())),
            // The request was given only the time left for the run, so a failure at its end
            // is the run timing out (the node's clock counts whole milliseconds).
            Err(_) if self.end.saturating_duration_since(Instant::now()) < RUN_END_SLACK => {
                Err(self.timed_out())
            }
            Err(e) => Err(Failure(format!("request failed: {e}"))),
        }
    }

    fn outcome(mut self) -> Outcome {
        self.sorted.sort_unstable();
        Outcome::Latency(Latency {
            sorted: self.sorted,
        })
    }
}

/// `bench` on the std adapter.
pub fn run_std(addr: &str, bench: &Bench) -> Result<Outcome, Failure> {
    let client = flowee_std::Client::connect(addr, bench_config())
        .map_err(|e| Failure(format!("cannot connect to {addr}: {e}")))?;
    if bench.requests {
        let outcome = std_requests(&client, bench);
        client.close();
        return outcome;
    }
    let (echoes, start) = start(
        bench,
        |handler| client.handle(BENCH_SERVICE, None, handler),
        |m| client.send(m, Priority::Normal).map_err(|e| e.to_string()),
    )?;
    let deadline = start + bench.timeout;
    let sender = {
        let (echoes, client) = (echoes.clone(), client.clone());
        std::thread::spawn(move || {
            let mut full = false;
            loop {
                let listener = echoes.resume.listen();
                if echoes.done.load(Ordering::SeqCst) {
                    break;
                }
                if echoes.held.load(Ordering::SeqCst) == 0 {
                    if listener.wait_deadline(deadline).is_none() {
                        break;
                    }
                    continue;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if !client.drain_to(if full { 0 } else { PACE }, left) {
                    break;
                }
                let result = client.send(echoes.message(), Priority::Normal);
                full = matches!(result, Err(SendError::QueueFull(_)));
                if !echoes.sent_held(result) {
                    break;
                }
            }
        })
    };
    while !echoes.done.load(Ordering::SeqCst) {
        let listener = echoes.finished.listen();
        if echoes.done.load(Ordering::SeqCst) || listener.wait_deadline(deadline).is_none() {
            break;
        }
    }
    let elapsed = start.elapsed();
    // Closing ends the sender's wait for the queue, if it waits.
    echoes.finish();
    client.close();
    let _ = sender.join();
    echoes.outcome(elapsed)
}

/// Registers the echo handler, then sends the first window (one message in latency mode);
/// returns the shared state and when the run started.
fn start<T, E: std::fmt::Display>(
    bench: &Bench,
    handle: impl FnOnce(EchoHandler) -> Result<T, E>,
    send: impl FnOnce(Message<'_>) -> Result<(), String>,
) -> Result<(Arc<Echoes>, Instant), Failure> {
    let echoes = Echoes::new(bench);
    handle(EchoHandler(echoes.clone())).map_err(|e| Failure(e.to_string()))?;
    let start = Instant::now();
    if bench.count == 0 {
        echoes.finish();
        return Ok((echoes, start));
    }
    echoes
        .timing
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .0 = Instant::now();
    // The first message goes out here, the rest of the window through the sender, at the
    // socket's pace.
    let mut send = Some(send);
    for _ in 0..echoes.initial(bench.window) {
        // Count first: an echo may come back before `send` returns.
        echoes.claim();
        match send.take() {
            Some(send) => {
                send(echoes.message()).map_err(|e| Failure(format!("cannot send: {e}")))?
            }
            None => echoes.hold(),
        }
    }
    Ok((echoes, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bench(count: u64) -> Bench {
        Bench {
            count,
            size: 100,
            window: 1,
            latency: false,
            requests: false,
            adapter: Adapter::Smol,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_send_that_fails_during_the_run_is_the_outcome() {
        let echoes = Echoes::new(&bench(3));
        let message = echoes.message();
        assert!(!echoes.sent_held(Err(SendError::Closed(message))));
        let failure = echoes.outcome(Duration::from_secs(1)).unwrap_err();
        assert!(failure.0.starts_with("cannot send"), "{}", failure.0);
    }

    #[test]
    fn a_send_that_fails_after_a_timeout_leaves_the_timeout_as_the_outcome() {
        let echoes = Echoes::new(&bench(3));
        echoes.finish();
        let message = echoes.message();
        assert!(!echoes.sent_held(Err(SendError::Closed(message))));
        let failure = echoes.outcome(Duration::from_secs(1)).unwrap_err();
        assert_eq!(failure.0, "timed out: 0 of 3 echoes came back");
    }
}
