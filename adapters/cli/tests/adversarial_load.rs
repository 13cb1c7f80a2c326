//! Adversarial load on real sockets: `flowee-cli serve --echo` (the smol server) in its own
//! process, and in this one about a thousand concurrent connections, most of them good clients
//! doing echo and request/response, the rest attacking it. It stops by itself.
//!
//! The short variant runs with `cargo test` (so in `.ci/run`); the full one is ignored by
//! default:
//!
//! ```text
//! cargo test --release -p flowee-cli --test adversarial_load -- --ignored --nocapture
//! FLOWEE_LOAD_SECS=600 cargo test --release -p flowee-cli --test adversarial_load -- --ignored --nocapture
//! ```
//!
//! It checks that every message of every good client comes back intact exactly once, that
//! every bad connection is closed by the server for the right reason (read from the server's
//! log), that repeat offenders are banned and stay refused when they reconnect, that the
//! server's peak RSS stays under 256 MiB and does not grow with the attack's length, and that
//! an idle server with its connections open uses next to no CPU. Linux only: it binds
//! attackers to their own loopback addresses (127.x.y.z) and reads the server's `/proc`.
#![cfg(target_os = "linux")]

mod common;

use common::{RssSampler, Server, connect_from, raise_fd_limit, read_within};
use flowee_proto::cmf::{Value, Writer};
use flowee_proto::connection::{CloseReason, Config, Connection, Event, Message, Priority};
use flowee_proto::frame::PING_FRAME;
use flowee_proto::header::{Header, tags};
use flowee_smol::{Client, NodeConfig, NodeEvent};
use smol::Async;
use smol::future::FutureExt;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How big and how long a run is.
#[derive(Clone, Copy, Debug)]
struct Plan {
    attack: Duration,
    ping_timeout: Duration,
    good_raw: usize,
    good_smol: usize,
    /// Attacking addresses per kind of attack (the connection flood uses one address).
    attackers: usize,
    /// Slow attackers (slowloris, silence) per kind: they hold their connection open.
    holders: usize,
    flood: usize,
    pinged_clients: usize,
}

impl Plan {
    fn short() -> Plan {
        Plan {
            attack: Duration::from_secs(10),
            ping_timeout: Duration::from_secs(4),
            good_raw: 900,
            good_smol: 100,
            attackers: 12,
            holders: 48,
            flood: 200,
            pinged_clients: 10,
        }
    }

    fn full() -> Plan {
        let secs = std::env::var("FLOWEE_LOAD_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60);
        Plan {
            attack: Duration::from_secs(secs),
            ping_timeout: Duration::from_secs(10),
            ..Plan::short()
        }
    }
}

/// Most connections the server takes from one address.
const MAX_PER_IP: usize = 128;
/// Peak server RSS allowed.
const RSS_BOUND_KIB: u64 = 256 * 1024;

#[test]
fn adversarial_load_short() {
    run(Plan::short());
}

#[test]
#[ignore = "takes a minute or more; see the file's doc for the command"]
fn adversarial_load_full() {
    run(Plan::full());
}

fn run(plan: Plan) {
    raise_fd_limit(4096);
    let server = Server::start(&[
        "--echo",
        "--ping-timeout",
        &plan.ping_timeout.as_secs_f64().to_string(),
        "--max-per-ip",
        &MAX_PER_IP.to_string(),
    ]);
    let addr = server.addr;
    let start = Instant::now();
    let attack_end = start + plan.attack;
    let sampler = RssSampler::start(server.pid());

    let outcome = smol::block_on(async {
        let good_done = Arc::new(AtomicBool::new(false));
        let mut good = Vec::new();
        // Well inside the server's ping timeout, even on a busy machine.
        let ping = plan.ping_timeout / 4;
        for i in 0..plan.good_raw {
            let ip = Ipv4Addr::new(127, 1, (i / 200) as u8, (i % 200 + 1) as u8);
            let done = good_done.clone();
            good.push(smol::spawn(good_raw(
                addr, ip, i as u64, ping, attack_end, done,
            )));
        }
        let mut smol_good = Vec::new();
        for i in 0..plan.good_smol {
            let done = good_done.clone();
            smol_good.push(smol::spawn(good_smol(
                addr, i as u64, ping, attack_end, done,
            )));
        }
        let mut attacks = Vec::new();
        for kind in Attack::ALL {
            let count = match kind {
                Attack::Slowloris | Attack::Silence => plan.holders,
                Attack::ConnectionFlood => plan.flood,
                _ => plan.attackers,
            };
            for n in 0..count {
                let ip = kind.ip(n);
                attacks.push(smol::spawn(attack_loop(kind, ip, addr, attack_end, plan)));
            }
        }
        let pinged = smol::spawn(pinged_clients(plan.pinged_clients));

        let mut attempts: Vec<Attempt> = Vec::new();
        for a in attacks {
            attempts.extend(a.await);
        }
        let pinged = pinged.await;
        let attack_secs = start.elapsed();
        let rss_attack = sampler.samples();

        // Quiet: only the good clients are left, idle apart from their pings.
        smol::Timer::after(Duration::from_secs(3)).await;
        let cpu_before = server.cpu_secs();
        let idle_from = Instant::now();
        let connections_idle = server.open_connections();
        smol::Timer::after(Duration::from_secs(5)).await;
        let idle_cpu = (server.cpu_secs() - cpu_before) / idle_from.elapsed().as_secs_f64();
        good_done.store(true, Ordering::SeqCst);

        let mut reports = Vec::new();
        for g in good {
            reports.push(g.await);
        }
        for g in smol_good {
            reports.push(g.await);
        }
        Outcome {
            attempts,
            reports,
            pinged,
            attack_secs,
            rss_attack,
            idle_cpu,
            connections_idle,
        }
    });
    let peak_rss = server.peak_rss_kib();
    let log = server.stop();
    check_and_report(&plan, &outcome, &log, peak_rss);
}

struct Outcome {
    attempts: Vec<Attempt>,
    reports: Vec<GoodReport>,
    pinged: PingedReport,
    attack_secs: Duration,
    rss_attack: Vec<(Duration, u64)>,
    idle_cpu: f64,
    connections_idle: usize,
}

/// Reads and discards until the server closes the connection; false if it is still open
/// after `limit`.
async fn closed_by_server(stream: &mut Async<TcpStream>, limit: Duration) -> bool {
    let mut buf = vec![0u8; 16 * 1024];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    };
    read_all
        .or(async {
            smol::Timer::after(limit).await;
            false
        })
        .await
}

// ---------------------------------------------------------------------------------------
// Good clients

#[derive(Debug, Default)]
struct GoodReport {
    sent: u64,
    received: u64,
    bytes: u64,
    /// Echoes that did not match what was sent, came twice, or never came.
    corrupt: u64,
    duplicate: u64,
    missing: u64,
    /// Closes, refusals and failed requests.
    failures: Vec<String>,
}

/// The body of message `seq` of client `client`: its number, then a pattern of both.
fn good_body(client: u64, seq: u64) -> Vec<u8> {
    let len = if seq % 20 == 19 {
        20_000
    } else {
        100 + (seq % 200) as usize
    };
    let mut body = seq.to_le_bytes().to_vec();
    body.extend((0..len - 8).map(|i| (client as usize * 31 + seq as usize * 7 + i) as u8));
    body
}

/// A client on the sans-IO core itself, from its own address: sends echo messages (some of
/// them sequences) with at most 8 waiting, checks every echo, pings every `ping`.
async fn good_raw(
    addr: SocketAddr,
    ip: Ipv4Addr,
    client: u64,
    ping: Duration,
    attack_end: Instant,
    done: Arc<AtomicBool>,
) -> GoodReport {
    let mut report = GoodReport::default();
    let mut stream = match connect_from(ip, addr).await {
        Ok(s) => s,
        Err(e) => {
            report.failures.push(format!("connect: {e}"));
            return report;
        }
    };
    let epoch = Instant::now();
    let clock = || flowee_proto::Instant::from_millis(epoch.elapsed().as_millis() as u64);
    let config = Config {
        ping_interval: ping,
        ..Config::default()
    };
    let mut conn: Connection = Connection::connecting(clock(), config);
    conn.handle_connected(clock());
    let mut seen: BTreeSet<u64> = BTreeSet::new();
    let mut next_send = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let now = Instant::now();
        let sending = now < attack_end;
        if sending && now >= next_send && report.sent - report.received < 8 {
            let body = good_body(client, report.sent);
            let header = Header::new(7, 1);
            if conn
                .send(clock(), Message::new(&header, &body), Priority::Normal)
                .is_ok()
            {
                report.sent += 1;
                next_send = now + Duration::from_millis(500);
            }
        }
        if !sending
            && report.received + report.missing >= report.sent
            && done.load(Ordering::SeqCst)
        {
            break;
        }
        if !sending && now > attack_end + Duration::from_secs(20) {
            // Echoes that never came.
            report.missing = report.sent - report.received;
        }
        while let Some(data) = conn.poll_transmit() {
            match stream.write(data).await {
                Ok(n) => conn.consume_transmit(n),
                Err(e) => {
                    report.failures.push(format!("write: {e}"));
                    return report;
                }
            }
        }
        let wait = conn
            .poll_timeout()
            .map(|at| Duration::from_millis(at.as_millis().saturating_sub(clock().as_millis())))
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_millis(100));
        let read = read_within(&mut stream, &mut buf, wait).await;
        match read {
            Some(Ok(0)) => conn.handle_eof(clock()),
            Some(Ok(n)) => {
                let mut input = &buf[..n];
                while !input.is_empty() {
                    let taken = conn.handle_input(clock(), input);
                    input = &input[taken..];
                    drain_good(&mut conn, client, &mut seen, &mut report);
                }
            }
            Some(Err(e)) => {
                report.failures.push(format!("read: {e}"));
                return report;
            }
            None => {}
        }
        conn.handle_timeout(clock());
        drain_good(&mut conn, client, &mut seen, &mut report);
        if conn.is_closed() {
            return report;
        }
    }
    conn.close(clock());
    report
}

fn drain_good(
    conn: &mut Connection,
    client: u64,
    seen: &mut BTreeSet<u64>,
    report: &mut GoodReport,
) {
    while let Some(event) = conn.poll_event() {
        match event {
            Event::Message(m) => {
                let seq = m
                    .body
                    .get(..8)
                    .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
                    .unwrap_or(u64::MAX);
                if seq >= report.sent || m.body != good_body(client, seq).as_slice() {
                    report.corrupt += 1;
                } else if !seen.insert(seq) {
                    report.duplicate += 1;
                } else {
                    report.received += 1;
                    report.bytes += m.body.len() as u64;
                }
            }
            Event::Closed { reason } => report.failures.push(format!("closed: {reason}")),
            _ => {}
        }
    }
}

/// A client on the smol adapter (from 127.0.0.1): request/response with a RequestId, checks
/// every reply, and that nothing arrives that no request asked for.
async fn good_smol(
    addr: SocketAddr,
    client: u64,
    ping: Duration,
    attack_end: Instant,
    done: Arc<AtomicBool>,
) -> GoodReport {
    let mut report = GoodReport::default();
    let mut config = NodeConfig::default();
    config.connection.ping_interval = ping;
    let c = match Client::connect(addr, config).await {
        Ok(c) => c,
        Err(e) => {
            report.failures.push(format!("connect: {e}"));
            return report;
        }
    };
    let mut events = c.events();
    let mut unasked = c.incoming();
    let client = client + 1_000_000;
    while Instant::now() < attack_end {
        let body = good_body(client, report.sent);
        report.sent += 1;
        match c
            .request(
                Message::new(&Header::new(8, 1), &body),
                Duration::from_secs(20),
            )
            .await
        {
            Ok(reply) if reply.body == body => {
                report.received += 1;
                report.bytes += body.len() as u64;
            }
            Ok(_) => report.corrupt += 1,
            Err(e) => report.failures.push(format!("request: {e}")),
        }
        smol::Timer::after(Duration::from_millis(100)).await;
    }
    while !done.load(Ordering::SeqCst) {
        smol::Timer::after(Duration::from_millis(100)).await;
    }
    // Replies go to their requests: anything here is a duplicate or unasked for.
    while let Some(Some(_)) = smol::future::poll_once(unasked.next()).await {
        report.duplicate += 1;
    }
    while let Some(Some(e)) = smol::future::poll_once(events.next()).await {
        if let NodeEvent::Closed { reason, .. } = e {
            report.failures.push(format!("closed: {reason}"));
        }
    }
    c.close().await;
    report
}

// ---------------------------------------------------------------------------------------
// Attacks

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Attack {
    Garbage,
    Oversized,
    NoHeaderEnd,
    SequenceBomb,
    SequenceOverflow,
    Slowloris,
    Silence,
    PingFlood,
    ConnectionFlood,
}

impl Attack {
    const ALL: [Attack; 9] = [
        Attack::Garbage,
        Attack::Oversized,
        Attack::NoHeaderEnd,
        Attack::SequenceBomb,
        Attack::SequenceOverflow,
        Attack::Slowloris,
        Attack::Silence,
        Attack::PingFlood,
        Attack::ConnectionFlood,
    ];

    /// Each kind attacks from its own addresses: 127.(100 + kind).0.(n + 1).
    fn ip(self, n: usize) -> Ipv4Addr {
        let host = if self == Attack::ConnectionFlood {
            0
        } else {
            n
        };
        Ipv4Addr::new(
            127,
            100 + self as u8,
            (host / 250) as u8,
            (host % 250 + 1) as u8,
        )
    }

    fn of(ip: IpAddr) -> Option<Attack> {
        let IpAddr::V4(v4) = ip else { return None };
        let [a, b, ..] = v4.octets();
        (a == 127 && b >= 100)
            .then(|| Attack::ALL.get(usize::from(b - 100)).copied())
            .flatten()
    }

    /// The reasons the server may give for closing such a connection. A ban that lands while
    /// the connection is open closes it as `banned`.
    fn expected_closes(self) -> &'static [&'static str] {
        match self {
            Attack::Garbage => &["not_flowee", "banned"],
            Attack::Oversized => &["frame_too_large", "banned"],
            Attack::NoHeaderEnd => &["missing_header_end", "banned"],
            Attack::SequenceBomb => &["sequence_too_large", "banned"],
            Attack::SequenceOverflow => &["sequence_overflow", "banned"],
            Attack::Slowloris | Attack::Silence | Attack::ConnectionFlood => {
                &["ping_timeout", "banned"]
            }
            Attack::PingFlood => &["banned"],
        }
    }

    /// Whether every address of this kind must end up banned: repeat offenders of the fast
    /// attacks are (slow ones earn 50 points per ping timeout and take longer than a run).
    fn must_be_banned(self) -> bool {
        !matches!(
            self,
            Attack::Slowloris | Attack::Silence | Attack::ConnectionFlood
        )
    }

    /// How long the server may take to close it.
    fn close_limit(self, plan: &Plan) -> Duration {
        match self {
            Attack::Slowloris | Attack::Silence | Attack::ConnectionFlood => {
                plan.ping_timeout + Duration::from_secs(5)
            }
            _ => Duration::from_secs(5),
        }
    }

    /// The bytes that open the attack.
    fn opening(self) -> Vec<u8> {
        match self {
            // A plausible length, then not a ServiceId.
            Attack::Garbage => {
                let mut g = vec![0x40, 0x00];
                g.extend((0..62u8).map(|i| i.wrapping_mul(97) | 0x80));
                g
            }
            Attack::Oversized => {
                let mut f = vec![0xff, 0xff, 0x08, 0x03];
                f.extend([0u8; 60]);
                f
            }
            Attack::NoHeaderEnd => frame(
                &[
                    (tags::SERVICE_ID, Value::Unsigned(3)),
                    (tags::MESSAGE_ID, Value::Unsigned(2)),
                    (12, Value::Unsigned(5)),
                ],
                false,
                b"",
            ),
            Attack::SequenceBomb => frame(
                &[
                    (tags::SERVICE_ID, Value::Unsigned(3)),
                    (tags::SEQUENCE_START, Value::Unsigned(2_147_483_646)),
                    (tags::LAST_IN_SEQUENCE, Value::Bool(false)),
                ],
                true,
                &[0x55; 100],
            ),
            Attack::SequenceOverflow => {
                let mut f = frame(
                    &[
                        (tags::SERVICE_ID, Value::Unsigned(3)),
                        (tags::SEQUENCE_START, Value::Unsigned(100)),
                        (tags::LAST_IN_SEQUENCE, Value::Bool(false)),
                    ],
                    true,
                    &[0x11; 80],
                );
                f.extend(frame(
                    &[
                        (tags::SERVICE_ID, Value::Unsigned(3)),
                        (tags::LAST_IN_SEQUENCE, Value::Bool(false)),
                    ],
                    true,
                    &[0x22; 80],
                ));
                f
            }
            // The start of a 9000-byte frame; the rest comes a byte a second.
            Attack::Slowloris => vec![0x28, 0x23, 0x08, 0x03],
            Attack::Silence | Attack::ConnectionFlood => Vec::new(),
            // Pings, and more of them below, never reading a pong.
            Attack::PingFlood => PING_FRAME.repeat(10_000),
        }
    }
}

/// A frame with these header tokens (and HeaderEnd if `end`), then `body`.
fn frame(header: &[(u32, Value<'_>)], end: bool, body: &[u8]) -> Vec<u8> {
    let mut w = Writer::new(Vec::new());
    for (tag, value) in header {
        w.add(*tag, *value);
    }
    if end {
        w.add(tags::HEADER_END, Value::Bool(true));
    }
    let mut bytes = w.finish().expect("a header");
    bytes.extend_from_slice(body);
    let len = (bytes.len() + 2) as u16;
    let mut out = len.to_le_bytes().to_vec();
    out.extend(bytes);
    out
}

/// One connection of an attack, as the attacker saw it.
#[derive(Debug)]
struct Attempt {
    kind: Attack,
    /// The TCP connection could not be made (not counted as a failure: the server may be
    /// busy accepting).
    connect_failed: bool,
    closed_by_server: bool,
}

/// Attacks again and again from one address until the attack time is over; every attempt
/// waits for the server to close the connection. After a ban, the reconnects are the
/// reconnect-to-evade-ban attack: they must be refused.
async fn attack_loop(
    kind: Attack,
    ip: Ipv4Addr,
    addr: SocketAddr,
    attack_end: Instant,
    plan: Plan,
) -> Vec<Attempt> {
    let mut attempts = Vec::new();
    let mut n = 0u64;
    while Instant::now() < attack_end {
        let mut stream = match connect_from(ip, addr).await {
            Ok(s) => s,
            Err(_) => {
                attempts.push(Attempt {
                    kind,
                    connect_failed: true,
                    closed_by_server: false,
                });
                smol::Timer::after(Duration::from_millis(100)).await;
                continue;
            }
        };
        n += 1;
        let opening = kind.opening();
        let _ = stream.write_all(&opening).await;
        let limit = kind.close_limit(&plan);
        let closed = if kind == Attack::Slowloris {
            // One byte a second of the frame's header.
            let trickle = async {
                for i in 0.. {
                    smol::Timer::after(Duration::from_secs(1)).await;
                    if stream.write_all(&[0x10 + (i % 8) as u8]).await.is_err() {
                        break;
                    }
                }
                true
            };
            trickle
                .or(async {
                    smol::Timer::after(limit).await;
                    false
                })
                .await
        } else if kind == Attack::PingFlood {
            // Writes fail once the server has closed; it closes only when its unwritten pongs
            // pile up, so the attacker must not read them.
            let flood = async {
                while stream.write_all(&opening).await.is_ok() {}
                true
            };
            flood
                .or(async {
                    smol::Timer::after(limit).await;
                    false
                })
                .await
        } else {
            closed_by_server(&mut stream, limit).await
        };
        attempts.push(Attempt {
            kind,
            connect_failed: false,
            closed_by_server: closed,
        });
        // Attackers come back quickly; ones that were banned come back to evade it.
        smol::Timer::after(Duration::from_millis(50 + n % 50)).await;
    }
    attempts
}

#[derive(Debug, Default)]
struct PingedReport {
    clients: usize,
    closed_peer_pinged: usize,
    accepts: u64,
}

/// Clients of a server that pings them (only clients may ping): each must close with
/// `peer_pinged` and not reconnect.
async fn pinged_clients(count: usize) -> PingedReport {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let evil_addr = listener.local_addr().unwrap();
    let listener = Async::new(listener).unwrap();
    let accepts = Arc::new(AtomicU64::new(0));
    let counter = accepts.clone();
    let evil = smol::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            smol::spawn(async move {
                smol::Timer::after(Duration::from_millis(300)).await;
                let _ = s.write_all(&PING_FRAME).await;
                let mut buf = [0u8; 1024];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            })
            .detach();
        }
    });
    let mut report = PingedReport {
        clients: count,
        ..PingedReport::default()
    };
    let mut waiting = Vec::new();
    for _ in 0..count {
        waiting.push(smol::spawn(async move {
            let c = Client::connect(evil_addr, NodeConfig::default())
                .await
                .ok()?;
            let mut events = c.events();
            let closed = async {
                while let Some(e) = events.next().await {
                    if let NodeEvent::Closed { reason, .. } = e {
                        return Some(reason);
                    }
                }
                None
            }
            .or(async {
                smol::Timer::after(Duration::from_secs(10)).await;
                None
            })
            .await;
            // Time to reconnect if it (wrongly) would.
            smol::Timer::after(Duration::from_secs(2)).await;
            drop(c);
            closed
        }));
    }
    for w in waiting {
        if w.await == Some(CloseReason::PeerPinged) {
            report.closed_peer_pinged += 1;
        }
    }
    report.accepts = accepts.load(Ordering::SeqCst);
    drop(evil);
    report
}

// ---------------------------------------------------------------------------------------
// Checks and the report

/// What the server's log says about one address.
#[derive(Debug, Default)]
struct Seen {
    closes: BTreeMap<String, u64>,
    refused: BTreeMap<String, u64>,
    banned: bool,
}

fn parse_log(log: &[String]) -> BTreeMap<IpAddr, Seen> {
    let mut peers: BTreeMap<String, SocketAddr> = BTreeMap::new();
    let mut by_ip: BTreeMap<IpAddr, Seen> = BTreeMap::new();
    for line in log {
        let Some(rest) = line.strip_prefix("flowee-cli: ") else {
            continue;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        match words.as_slice() {
            ["open", id, peer, ..] => {
                peers.insert(id.to_string(), peer.parse().expect("a peer address"));
            }
            ["close", id, reason, ..] => {
                let id = id.trim_end_matches(':');
                let peer = peers
                    .get(id)
                    .unwrap_or_else(|| panic!("close of unknown {id}"));
                *by_ip
                    .entry(peer.ip())
                    .or_default()
                    .closes
                    .entry(reason.to_string())
                    .or_default() += 1;
            }
            ["refused", peer, reason, ..] => {
                let peer: SocketAddr = peer.trim_end_matches(':').parse().expect("a peer");
                *by_ip
                    .entry(peer.ip())
                    .or_default()
                    .refused
                    .entry(reason.to_string())
                    .or_default() += 1;
            }
            ["banned", ip, ..] => {
                by_ip.entry(ip.parse().expect("an ip")).or_default().banned = true
            }
            _ => {}
        }
    }
    by_ip
}

/// Most connections the server held open at once, from its log.
fn peak_open(log: &[String]) -> usize {
    let (mut open, mut peak) = (0usize, 0);
    for line in log {
        if line.contains(": open ") {
            open += 1;
            peak = peak.max(open);
        } else if line.contains(": close ") {
            open = open.saturating_sub(1);
        }
    }
    peak
}

fn check_and_report(plan: &Plan, outcome: &Outcome, log: &[String], peak_rss: u64) {
    let seen = parse_log(log);
    let mut problems: Vec<String> = Vec::new();

    // Good clients: everything back, intact, once; never closed, refused or banned.
    let mut good = GoodReport::default();
    for r in &outcome.reports {
        good.sent += r.sent;
        good.received += r.received;
        good.bytes += r.bytes;
        good.corrupt += r.corrupt;
        good.duplicate += r.duplicate;
        good.missing += r.sent - r.received;
        good.failures.extend(r.failures.iter().cloned());
    }
    if good.received != good.sent || good.corrupt + good.duplicate > 0 {
        problems.push(format!(
            "good clients: {} sent, {} back, {} corrupt, {} duplicate",
            good.sent, good.received, good.corrupt, good.duplicate
        ));
    }
    if !good.failures.is_empty() {
        problems.push(format!(
            "{} good-client failures, e.g. {:?}",
            good.failures.len(),
            &good.failures[..good.failures.len().min(5)]
        ));
    }
    for (ip, s) in &seen {
        if Attack::of(*ip).is_none() && (s.banned || !s.refused.is_empty()) {
            problems.push(format!("good address {ip} was refused or banned: {s:?}"));
        }
        if Attack::of(*ip).is_none() && s.closes.keys().any(|r| r != "eof" && r != "local") {
            problems.push(format!("good address {ip} was closed: {:?}", s.closes));
        }
    }

    // Attacks: every connection closed by the server, for the right reason; bans.
    let mut rows = Vec::new();
    for kind in Attack::ALL {
        let attempts: Vec<&Attempt> = outcome.attempts.iter().filter(|a| a.kind == kind).collect();
        let made = attempts.iter().filter(|a| !a.connect_failed).count();
        let closed = attempts.iter().filter(|a| a.closed_by_server).count();
        if closed != made {
            problems.push(format!(
                "{kind:?}: {} connections not closed",
                made - closed
            ));
        }
        let mut closes: BTreeMap<String, u64> = BTreeMap::new();
        let mut refused: BTreeMap<String, u64> = BTreeMap::new();
        let mut ips = 0;
        let mut banned = 0;
        for (ip, s) in seen.iter().filter(|(ip, _)| Attack::of(**ip) == Some(kind)) {
            ips += 1;
            banned += usize::from(s.banned);
            for (r, n) in &s.closes {
                *closes.entry(r.clone()).or_default() += n;
            }
            for (r, n) in &s.refused {
                *refused.entry(r.clone()).or_default() += n;
            }
            if kind.must_be_banned() && !s.banned {
                problems.push(format!("{kind:?}: repeat offender {ip} not banned"));
            }
        }
        for reason in closes.keys() {
            if !kind.expected_closes().contains(&reason.as_str()) {
                problems.push(format!("{kind:?}: closed as {reason}: {closes:?}"));
            }
        }
        let refused_ok = ["banned", "too_many_from_address"];
        if refused.keys().any(|r| !refused_ok.contains(&r.as_str())) {
            problems.push(format!("{kind:?}: refused as {refused:?}"));
        }
        if kind == Attack::ConnectionFlood && !refused.contains_key("too_many_from_address") {
            problems.push("the connection flood was never limited".into());
        }
        if made == 0 {
            problems.push(format!("{kind:?}: no connection was made"));
        }
        rows.push(format!(
            "| {kind:?} | {ips} | {made} | {} | {} | {banned} |",
            fmt_counts(&closes),
            fmt_counts(&refused)
        ));
    }
    let p = &outcome.pinged;
    if p.closed_peer_pinged != p.clients || p.accepts != p.clients as u64 {
        problems.push(format!("pinged clients: {p:?}"));
    }

    // Memory: under the bound, and not growing with the attack's length.
    let samples = &outcome.rss_attack;
    let half = outcome.attack_secs / 2;
    let max_of = |f: &dyn Fn(Duration) -> bool| {
        samples
            .iter()
            .filter(|(t, _)| f(*t))
            .map(|(_, k)| *k)
            .max()
            .unwrap_or(0)
    };
    let first = max_of(&|t| t <= half);
    let second = max_of(&|t| t > half);
    if peak_rss > RSS_BOUND_KIB {
        problems.push(format!("peak RSS {peak_rss} KiB over {RSS_BOUND_KIB} KiB"));
    }
    if second > first + first / 10 + 8 * 1024 {
        problems.push(format!(
            "RSS grows: {first} KiB in the first half, {second} KiB in the second"
        ));
    }
    if outcome.idle_cpu > 0.10 {
        problems.push(format!(
            "idle server uses {:.1}% CPU",
            outcome.idle_cpu * 100.0
        ));
    }

    let bad_made = outcome
        .attempts
        .iter()
        .filter(|a| !a.connect_failed)
        .count();
    let fast_kinds = Attack::ALL.len() - 3;
    println!(
        "\nadversarial load: {:.0} s of attack, ping timeout {} s, {} good clients ({} on the \
         core, {} on flowee-smol), {} attacking addresses\n",
        outcome.attack_secs.as_secs_f64(),
        plan.ping_timeout.as_secs(),
        plan.good_raw + plan.good_smol,
        plan.good_raw,
        plan.good_smol,
        fast_kinds * plan.attackers + 2 * plan.holders + 1,
    );
    println!("| figure | value |\n|---|---|");
    println!("| connections open at once, at most | {} |", peak_open(log));
    println!(
        "| good messages sent / back intact / lost | {} / {} / {} |",
        good.sent, good.received, good.missing
    );
    println!("| good bytes echoed | {:.1} MB |", good.bytes as f64 / 1e6);
    println!("| bad connections made (all closed by the server) | {bad_made} |");
    println!(
        "| clients pinged by their server, closed as peer_pinged (no reconnect) | {} / {} |",
        p.closed_peer_pinged, p.clients
    );
    println!(
        "| server peak RSS (bound 256 MiB) | {:.1} MiB |",
        peak_rss as f64 / 1024.0
    );
    println!(
        "| server RSS, max in first / second half of the attack | {:.1} / {:.1} MiB |",
        first as f64 / 1024.0,
        second as f64 / 1024.0
    );
    println!(
        "| idle server CPU with {} connections open | {:.2}% of a core |",
        outcome.connections_idle,
        outcome.idle_cpu * 100.0
    );
    println!("\n| attack | addresses | connections | server closed as | refused as | banned |");
    println!("|---|---|---|---|---|---|");
    for row in &rows {
        println!("{row}");
    }
    assert!(problems.is_empty(), "problems:\n{}", problems.join("\n"));
}

fn fmt_counts(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "-".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
