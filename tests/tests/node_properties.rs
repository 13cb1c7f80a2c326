//! Random mixes of good, silent, garbage-sending, flooding and reconnecting peers against one
//! node with tiny tables keep the invariants: no good peer is ever banned or closed, every bad
//! one is closed, every request the node makes ends in exactly one reply or failure, the
//! node's tables and output queue stay within their bounds, and no deadline is stale (checked
//! by the hosts after every timeout).

use flowee_proto::frame::PING_FRAME;
use flowee_proto::node::NodeConfig;
use flowee_proto::{Header, Instant, Message, Node, Priority};
use flowee_sim::{
    Action, Host, LinkModel, NodeApp, NodeHost, NodeReceived, RawHost, Sim, Socket, Trace,
};
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};
use std::any::Any;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Peer {
    /// Sends `n` messages and pings as it should.
    Good(u8),
    /// Connects and says nothing.
    Silent,
    /// Sends bytes that are not the protocol.
    Garbage(u8),
    /// Pings as fast as it can.
    Flood(u16),
    /// Writes garbage, and connects again this many seconds after every close.
    Reconnect(u8),
}

/// The server's tables: tiny, so the bounds are reached and checked.
fn server_config() -> NodeConfig {
    let mut cfg = NodeConfig {
        max_connections: nz(8),
        max_bans: nz(2),
        max_scores: nz(2),
        rate_limit: true,
        rate_log_len: nz(4),
        max_pending_requests: nz(4),
        ..NodeConfig::default()
    };
    // Three connections of garbage from one address get it banned.
    cfg.connection.points.not_flowee = 400;
    cfg.connection.points.bad_frame = 400;
    cfg
}

fn nz(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap()
}

/// The most outputs the node may hold back (see `NodeUsage::queued_outputs`).
fn output_bound(cfg: &NodeConfig) -> usize {
    4 * cfg.max_connections.get() + cfg.max_pending_requests.get() + 2 * cfg.max_bans.get() + 64
}

/// The server application: asks every peer that sends a message something back (no peer
/// answers, so requests time out), and watches the node's tables while outputs are taken.
#[derive(Default)]
struct Asker {
    asked: usize,
    peak_queued: usize,
    peak_slots: usize,
}

impl NodeApp for Asker {
    fn on_output(&mut self, now: Instant, output: &NodeReceived, node: &mut Node) {
        let u = node.usage();
        self.peak_queued = self.peak_queued.max(u.queued_outputs);
        self.peak_slots = self.peak_slots.max(u.slots);
        if let NodeReceived::Message { id, .. } = output {
            let header = Header::new(4, 100);
            let ask = Message::new(&header, b"?");
            if node.request(now, *id, ask, Duration::from_secs(20)).is_ok() {
                self.asked += 1;
            }
        }
    }
}

/// A peer that writes garbage as soon as it is connected and connects again `delay` after
/// every close, a dozen times: it tries to escape a ban by reconnecting.
struct Reconnector {
    server: SocketAddr,
    delay: Duration,
    socket: Option<Socket>,
    out: Vec<u8>,
    next_connect: Option<Instant>,
    actions: Vec<Action>,
    connects: u64,
    closes: u32,
}

impl Reconnector {
    fn new(server: SocketAddr, start: Instant, delay: Duration) -> Self {
        Reconnector {
            server,
            delay,
            socket: None,
            out: Vec::new(),
            next_connect: Some(start),
            actions: Vec::new(),
            connects: 0,
            closes: 0,
        }
    }

    fn again(&mut self, now: Instant) {
        self.next_connect = (self.connects < 12).then_some(now + self.delay);
    }
}

impl Host for Reconnector {
    fn accept(&mut self, _: Instant, _: Socket, _: SocketAddr) -> bool {
        false
    }
    fn connected(&mut self, _: Instant, _: u64, socket: Socket) {
        self.socket = Some(socket);
        self.out = b"GET / HTTP/1.1\r\nHost: hub\r\n\r\n".to_vec();
    }
    fn connect_failed(&mut self, now: Instant, _: u64) {
        self.again(now);
    }
    fn input(&mut self, _: Instant, _: Socket, data: &[u8]) -> usize {
        data.len()
    }
    fn eof(&mut self, now: Instant, socket: Socket) {
        if self.socket == Some(socket) {
            self.socket = None;
            self.closes += 1;
            self.actions.push(Action::Close(socket));
            self.again(now);
        }
    }
    fn transmit(&mut self, socket: Socket) -> Option<&[u8]> {
        (self.socket == Some(socket) && !self.out.is_empty()).then_some(&self.out[..])
    }
    fn consume(&mut self, _: Socket, n: usize) {
        self.out.drain(..n);
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.next_connect
    }
    fn timeout(&mut self, now: Instant) {
        if self.next_connect.is_some_and(|at| at <= now) {
            self.next_connect = None;
            self.connects += 1;
            self.actions.push(Action::Connect {
                to: self.server,
                tag: self.connects,
            });
        }
    }
    fn run(&mut self, _: Instant, _: &mut Trace, _: &str) {}
    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop()
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[derive(Clone, Debug)]
struct Mix {
    seed: u64,
    peers: Vec<(u64, Peer)>,
    max_chunk: usize,
}

impl Arbitrary for Mix {
    fn arbitrary(g: &mut Gen) -> Self {
        // At most as many peers as the server takes connections, so no good peer is refused.
        let n = 1 + usize::arbitrary(g) % 8;
        let peers = (0..n)
            .map(|_| {
                let start = u64::arbitrary(g) % 120;
                let peer = match u8::arbitrary(g) % 6 {
                    0 | 1 => Peer::Good(u8::arbitrary(g) % 20),
                    2 => Peer::Silent,
                    3 => Peer::Garbage(u8::arbitrary(g)),
                    4 => Peer::Flood(200 + u16::arbitrary(g) % 2000),
                    _ => Peer::Reconnect(1 + u8::arbitrary(g) % 30),
                };
                (start, peer)
            })
            .collect();
        Mix {
            seed: u64::arbitrary(g),
            peers,
            max_chunk: *g.choose(&[1, 64, 1500, 65536]).unwrap(),
        }
    }
}

fn check(mix: Mix) -> TestResult {
    match run(&mix) {
        Ok(_) => TestResult::passed(),
        Err(e) => {
            eprintln!("{e}");
            TestResult::failed()
        }
    }
}

/// The server's peak table sizes, to show the bounds were reached.
fn run(mix: &Mix) -> Result<flowee_proto::node::NodeUsage, String> {
    let link = LinkModel {
        max_chunk: mix.max_chunk,
        ..LinkModel::default()
    };
    let cfg = server_config();
    let mut sim = Sim::new(mix.seed, link);
    let server = sim.add_host(
        "server",
        NodeHost::new(sim.now(), cfg.clone(), Asker::default()),
    );
    let server_addr = sim.addr(server);
    let mut good = Vec::new();
    let mut bad = Vec::new();
    let mut reconnectors = Vec::new();
    for (i, &(start, peer)) in mix.peers.iter().enumerate() {
        let at = Instant::from_secs(start);
        match peer {
            Peer::Good(n) => {
                let host = sim.add_host(
                    &format!("good{i}"),
                    NodeHost::new(sim.now(), NodeConfig::default(), ()),
                );
                sim.at(at, move |sim| {
                    let node = &mut sim.host_mut::<NodeHost>(host).node;
                    let id = node.connect(at, server_addr).unwrap();
                    for k in 0..n {
                        node.send(
                            at,
                            id,
                            Message::new(&Header::new(4, i32::from(k)), &[k; 100]),
                            Priority::Normal,
                        )
                        .unwrap();
                    }
                });
                good.push((host, n));
            }
            Peer::Reconnect(delay) => {
                let delay = Duration::from_secs(u64::from(delay));
                let host = Reconnector::new(server_addr, at, delay);
                reconnectors.push(sim.add_host(&format!("reconnect{i}"), host));
            }
            Peer::Silent | Peer::Garbage(_) | Peer::Flood(_) => {
                let host = sim.add_host(&format!("bad{i}"), RawHost::new());
                sim.at(at, move |sim| sim.connect(host, server, 0));
                let bytes: Vec<u8> = match peer {
                    Peer::Garbage(b) => {
                        let mut v = vec![0xFF, 0xFF, b, b.wrapping_mul(7)];
                        v.extend(std::iter::repeat_n(b, 100));
                        v
                    }
                    Peer::Flood(n) => PING_FRAME.repeat(usize::from(n)),
                    _ => Vec::new(),
                };
                if !bytes.is_empty() {
                    sim.at(at + Duration::from_millis(100), move |sim| {
                        sim.host_mut::<RawHost>(host).write(&bytes);
                    });
                }
                bad.push(host);
            }
        }
    }
    sim.run_until(Instant::from_secs(600))
        .map_err(|e| e.to_string())?;

    let s = sim.host::<NodeHost<Asker>>(server);
    let good_ips: Vec<_> = good.iter().map(|(h, _)| sim.addr(*h).ip()).collect();
    for (t, o) in &s.log {
        if let NodeReceived::Banned { ip, .. } = o {
            if good_ips.contains(ip) {
                return Err(format!("good peer {ip} banned at {t:?}"));
            }
        }
    }
    for &(host, n) in &good {
        let c = sim.host::<NodeHost>(host);
        if let Some((t, o)) = c
            .log
            .iter()
            .find(|(_, o)| matches!(o, NodeReceived::Closed { .. }))
        {
            return Err(format!(
                "good peer {} closed at {t:?}: {o:?}",
                sim.name(host)
            ));
        }
        let from_it = s
            .messages()
            .iter()
            .filter(|(id, ..)| s.node.peer(*id).map(|a| a.ip()) == Some(sim.addr(host).ip()))
            .count();
        if from_it != usize::from(n) {
            return Err(format!(
                "{}: {from_it} of {n} messages arrived",
                sim.name(host)
            ));
        }
    }
    for &host in &bad {
        if sim.host::<RawHost>(host).eof_at.is_none() {
            return Err(format!("bad peer {} was never closed", sim.name(host)));
        }
    }
    for &host in &reconnectors {
        let r = sim.host::<Reconnector>(host);
        if r.closes < 12 {
            return Err(format!(
                "{}: {} connects, {} closes",
                sim.name(host),
                r.connects,
                r.closes
            ));
        }
    }
    // Every request ends once: here always in a failure, as no peer answers.
    let ended = s.count(|o| {
        matches!(
            o,
            NodeReceived::RequestFailed { .. } | NodeReceived::Reply { .. }
        )
    });
    let u = s.node.usage();
    if ended + u.requests != s.app.asked {
        return Err(format!(
            "{} requests, {ended} ended, {} pending",
            s.app.asked, u.requests
        ));
    }
    let p = s.peak;
    let max = cfg.max_connections.get();
    if p.connections > max
        || p.slots > max
        || s.app.peak_slots > max
        || p.bans > cfg.max_bans.get()
        || p.scores > cfg.max_scores.get()
        || p.rate_log > cfg.rate_log_len.get()
        || p.requests > cfg.max_pending_requests.get()
        || p.timers > 4 * (p.slots + p.requests) + 64 + 1
        || s.app.peak_queued > output_bound(&cfg)
        || u.dropped_outputs > 0
    {
        return Err(format!(
            "tables over their bounds: {p:?}, {} queued, {} dropped",
            s.app.peak_queued, u.dropped_outputs
        ));
    }
    Ok(p)
}

#[test]
fn random_peers_keep_the_invariants() {
    QuickCheck::new()
        .tests(40)
        .max_tests(100)
        .quickcheck(check as fn(Mix) -> TestResult);
}

#[test]
fn every_kind_of_peer_at_once() {
    let mix = Mix {
        seed: 5,
        peers: vec![
            (0, Peer::Good(5)),
            (1, Peer::Silent),
            (2, Peer::Garbage(3)),
            (3, Peer::Flood(1500)),
            (4, Peer::Good(0)),
            (5, Peer::Garbage(8)),
            (6, Peer::Reconnect(5)),
            (7, Peer::Reconnect(12)),
        ],
        max_chunk: 100,
    };
    run(&mix).unwrap();
}

#[test]
fn the_bounds_are_reached_and_held() {
    let mix = Mix {
        seed: 9,
        peers: vec![
            (0, Peer::Good(10)),
            (0, Peer::Reconnect(4)),
            (1, Peer::Reconnect(6)),
            (2, Peer::Reconnect(3)),
            (3, Peer::Garbage(1)),
            (4, Peer::Good(6)),
            (5, Peer::Silent),
            (6, Peer::Garbage(2)),
        ],
        max_chunk: 1500,
    };
    let peak = run(&mix).unwrap();
    let cfg = server_config();
    assert_eq!(peak.bans, cfg.max_bans.get(), "{peak:?}");
    assert_eq!(peak.scores, cfg.max_scores.get(), "{peak:?}");
    assert_eq!(peak.rate_log, cfg.rate_log_len.get(), "{peak:?}");
    assert_eq!(peak.requests, cfg.max_pending_requests.get(), "{peak:?}");
}
