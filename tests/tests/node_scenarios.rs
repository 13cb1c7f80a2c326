//! Nodes with many peers, in the simulator: bans, rate limits, reconnects, broadcast and
//! requests.

use flowee_proto::cmf::{Reader, Writer};
use flowee_proto::node::{ConnId, NodeConfig, Refused, RequestError, Scope};
use flowee_proto::{Header, Instant, Message, Node, Priority, SendError};
use flowee_sim::{
    Action, Host, HostId, LinkModel, NodeApp, NodeHost, NodeReceived, RawHost, Sim, Socket, Trace,
};
use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

fn secs(n: u64) -> Instant {
    Instant::from_secs(n)
}

const HOUR: u64 = 3600;

/// Server application: answers every message with message id + 1, copying the header ints and
/// the body (like the Hub's replies), except request ids divisible by `drop_every`.
#[derive(Default)]
struct Echo {
    drop_every: Option<i32>,
}

impl NodeApp for Echo {
    fn on_output(&mut self, now: Instant, output: &NodeReceived, node: &mut Node) {
        let NodeReceived::Message {
            id, header, body, ..
        } = output
        else {
            return;
        };
        if let (Some(n), Some(rid)) = (self.drop_every, header.request_id()) {
            if rid % n == 0 {
                return;
            }
        }
        let mut reply = Header::new(header.service_id, header.message_id.unwrap_or(0) + 1);
        reply.ints = header.ints;
        let _ = node.send(now, *id, Message::new(&reply, body), Priority::Normal);
    }
}

/// A peer that connects, writes garbage as soon as it is connected, and connects again one
/// minute after every close: it tries to escape a ban by reconnecting.
struct Reconnector {
    server: SocketAddr,
    garbage: Vec<u8>,
    socket: Option<Socket>,
    out: Vec<u8>,
    next_connect: Option<Instant>,
    actions: Vec<Action>,
    connects: u32,
    /// Closes that came before any garbage was sent: refused at accept.
    refused_at: Vec<Instant>,
    accepted_at: Vec<Instant>,
}

impl Reconnector {
    fn new(server: SocketAddr) -> Self {
        Reconnector {
            server,
            garbage: b"GET / HTTP/1.1\r\nHost: hub\r\n\r\n".to_vec(),
            socket: None,
            out: Vec::new(),
            next_connect: Some(Instant::ZERO),
            actions: Vec::new(),
            connects: 0,
            refused_at: Vec::new(),
            accepted_at: Vec::new(),
        }
    }
}

impl Host for Reconnector {
    fn accept(&mut self, _: Instant, _: Socket, _: SocketAddr) -> bool {
        false
    }
    fn connected(&mut self, _now: Instant, _tag: u64, socket: Socket) {
        self.socket = Some(socket);
        self.out = self.garbage.clone();
    }
    fn connect_failed(&mut self, now: Instant, _tag: u64) {
        self.next_connect = Some(now + Duration::from_secs(60));
    }
    fn input(&mut self, _: Instant, _: Socket, data: &[u8]) -> usize {
        data.len()
    }
    fn eof(&mut self, now: Instant, socket: Socket) {
        if self.socket == Some(socket) {
            if self.out.is_empty() {
                self.accepted_at.push(now);
            } else {
                self.refused_at.push(now);
            }
            self.socket = None;
            self.actions.push(Action::Close(socket));
            self.next_connect = Some(now + Duration::from_secs(60));
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
    fn timeout(&mut self, _now: Instant) {
        self.next_connect = None;
        self.connects += 1;
        self.actions.push(Action::Connect {
            to: self.server,
            tag: u64::from(self.connects),
        });
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

/// A network: one echo server and `n` clients that each open a connection to it.
fn network(sim: &mut Sim, n: usize, server_cfg: NodeConfig) -> (HostId, Vec<(HostId, ConnId)>) {
    let server = sim.add_host(
        "server",
        NodeHost::new(sim.now(), server_cfg, Echo::default()),
    );
    let server_addr = sim.addr(server);
    let clients = (0..n)
        .map(|i| {
            let mut host = NodeHost::new(sim.now(), NodeConfig::default(), ());
            let id = host.node.connect(sim.now(), server_addr).unwrap();
            (sim.add_host(&format!("client{i}"), host), id)
        })
        .collect();
    (server, clients)
}

fn server_node(sim: &mut Sim, server: HostId) -> &mut Node {
    &mut sim.host_mut::<NodeHost<Echo>>(server).node
}

#[test]
fn a_misbehaving_peer_is_banned_across_reconnects_until_the_ban_expires() {
    let mut sim = Sim::new(21, LinkModel::default());
    let (server, clients) = network(&mut sim, 50, NodeConfig::default());
    let server_addr = sim.addr(server);
    let bad = sim.add_host("bad", Reconnector::new(server_addr));
    // The good clients keep talking now and then.
    for (k, &(host, id)) in clients.iter().enumerate() {
        for t in [10, 600, 5 * HOUR, 20 * HOUR] {
            sim.at(secs(t + k as u64), move |sim| {
                let node = &mut sim.host_mut::<NodeHost>(host).node;
                node.send(
                    sim_now(t),
                    id,
                    Message::new(&Header::new(5, 0), b"hi"),
                    Priority::Normal,
                )
                .unwrap();
            });
        }
    }
    sim.run_until(secs(30 * HOUR)).unwrap();

    let s = sim.host::<NodeHost<Echo>>(server);
    let bad_ip = sim.addr(bad).ip();
    // Ten connections of garbage at 100 points each reach the threshold of 1000.
    let banned: Vec<Instant> = s
        .log
        .iter()
        .filter_map(|(t, o)| {
            matches!(o, NodeReceived::Banned { ip, .. } if *ip == bad_ip).then_some(*t)
        })
        .collect();
    // Banned, and banned again after the ban ran out and it came back.
    assert_eq!(banned.len(), 2, "{banned:?}");
    let ban_at = banned[0];
    assert!(
        ban_at < secs(11 * 60),
        "banned after ten reconnects, at {ban_at:?}"
    );
    // Refused at accept for 24 h, then accepted again (and banned again).
    let refusals: Vec<Instant> = s
        .refused
        .iter()
        .filter(|(_, from, r)| from.ip() == bad_ip && matches!(r, Refused::Banned { .. }))
        .map(|(t, ..)| *t)
        .collect();
    assert!(refusals.len() > 1000, "{} refusals", refusals.len());
    let first_ban: Vec<&Instant> = refusals
        .iter()
        .filter(|t| **t < ban_at + Duration::from_secs(24 * HOUR))
        .collect();
    assert!(first_ban.iter().all(|t| **t >= ban_at));
    assert!(first_ban.len() > 1000, "{} refusals", first_ban.len());
    let unbanned = s
        .log
        .iter()
        .find_map(|(t, o)| {
            matches!(o, NodeReceived::Unbanned { ip } if *ip == bad_ip).then_some(*t)
        })
        .expect("the ban ends");
    assert_eq!(unbanned, ban_at + Duration::from_secs(24 * HOUR));
    let r = sim.host::<Reconnector>(bad);
    assert!(
        r.accepted_at.iter().any(|t| *t > unbanned),
        "accepted after the ban"
    );
    // No good client was ever closed or banned; every message was answered.
    for &(host, _) in &clients {
        let c = sim.host::<NodeHost>(host);
        assert_eq!(c.count(|o| matches!(o, NodeReceived::Closed { .. })), 0);
        assert_eq!(c.messages().len(), 4);
    }
    assert_eq!(
        s.count(|o| matches!(o, NodeReceived::Banned { .. })),
        2,
        "only the bad peer, twice"
    );
}

fn sim_now(t: u64) -> Instant {
    secs(t)
}

#[test]
fn an_exported_ban_list_is_enforced_by_a_fresh_node() {
    let mut sim = Sim::new(22, LinkModel::default());
    let (server, _clients) = network(&mut sim, 50, NodeConfig::default());
    let bad = sim.add_host("bad", Reconnector::new(sim.addr(server)));
    sim.run_until(secs(15 * 60)).unwrap();
    let bad_ip = sim.addr(bad).ip();
    let unix_now = 1_800_000_000;
    let saved: Vec<_> = server_node(&mut sim, server)
        .export_bans(unix_now)
        .collect();
    assert_eq!(saved.len(), 1);
    assert_eq!(saved[0].ip, bad_ip);
    // The server restarts: a new node at the same address, with the saved bans.
    let ip = sim.addr(server).ip();
    sim.set_listening(server, false);
    sim.crash(server);
    let mut fresh = NodeHost::new(sim.now(), NodeConfig::default(), Echo::default());
    assert_eq!(fresh.node.import_bans(sim.now(), unix_now, saved), 1);
    let restarted = sim.add_host_at("restarted", ip, fresh);
    sim.run_for(Duration::from_secs(HOUR)).unwrap();
    let s = sim.host::<NodeHost<Echo>>(restarted);
    let refusals = s
        .refused
        .iter()
        .filter(|(_, from, r)| from.ip() == bad_ip && matches!(r, Refused::Banned { .. }))
        .count();
    assert!(refusals >= 50, "{refusals}");
    // The good clients reconnected to the restarted server.
    assert!(s.node.len() >= 50, "{}", s.node.len());
}

#[test]
fn the_rate_limiter_accepts_and_refuses_like_the_spec_example() {
    let exact = LinkModel {
        latency: Duration::ZERO,
        jitter: Duration::ZERO,
        ..LinkModel::default()
    };
    let mut sim = Sim::new(23, exact);
    let cfg = NodeConfig {
        rate_limit: true,
        ..NodeConfig::default()
    };
    let (server, _) = network(&mut sim, 50, cfg);
    let ip = IpAddr::V4(Ipv4Addr::new(192, 168, 7, 7));
    for t in [0, 5, 12, 19, 23] {
        let peer = sim.add_host_at(&format!("peer{t}"), ip, RawHost::new());
        sim.at(secs(t), move |sim| sim.connect(peer, server, 0));
    }
    sim.run_until(secs(30)).unwrap();
    let s = sim.host::<NodeHost<Echo>>(server);
    let refused: Vec<(Instant, Refused)> = s
        .refused
        .iter()
        .filter(|(_, from, _)| from.ip() == ip)
        .map(|(t, _, r)| (*t, *r))
        .collect();
    assert_eq!(refused, vec![(secs(19), Refused::RateLimited)]);
    assert_eq!(
        s.refused.len(),
        1,
        "the 50 clients on their own addresses pass"
    );
}

#[test]
fn a_client_reconnects_with_the_cpp_backoff_and_sends_what_was_queued() {
    let exact = LinkModel {
        latency: Duration::ZERO,
        jitter: Duration::ZERO,
        ..LinkModel::default()
    };
    let mut sim = Sim::new(24, exact);
    let (server, clients) = network(&mut sim, 50, NodeConfig::default());
    sim.set_listening(server, false);
    let (client, id) = clients[0];
    for i in 0..3 {
        let node = &mut sim.host_mut::<NodeHost>(client).node;
        node.send(
            Instant::ZERO,
            id,
            Message::new(&Header::new(9, i), b"queued"),
            Priority::Normal,
        )
        .unwrap();
    }
    sim.at(secs(100), move |sim| sim.set_listening(server, true));
    sim.run_until(secs(200)).unwrap();
    let c = sim.host::<NodeHost>(client);
    let connects: Vec<u64> = c
        .log
        .iter()
        .filter(|(_, o)| matches!(o, NodeReceived::Connect { .. }))
        .map(|(t, _)| t.as_millis() / 1000)
        .collect();
    // Attempts at 0 (fails), 0, 4, 17, 49, 93 (all fail), 137 (the server is back).
    assert_eq!(connects, vec![0, 0, 4, 17, 49, 93, 137]);
    let delays: Vec<u32> = c
        .log
        .iter()
        .filter_map(|(_, o)| match o {
            NodeReceived::Reconnecting { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .collect();
    assert_eq!(delays, vec![1, 2, 3, 4, 5, 6]);
    // The queued messages were delivered once, in order, and echoed.
    let s = sim.host::<NodeHost<Echo>>(server);
    let from_client: Vec<i32> = s
        .messages()
        .iter()
        .filter(|(_, h, _)| h.service_id == 9)
        .map(|(_, h, _)| h.message_id.unwrap())
        .collect();
    assert_eq!(from_client, vec![0, 1, 2]);
    assert_eq!(c.messages().len(), 3);
}

#[test]
fn a_broadcast_to_fifty_peers_arrives_once_at_each() {
    let mut sim = Sim::new(25, LinkModel::default());
    let (server, clients) = network(&mut sim, 50, NodeConfig::default());
    sim.run_until(secs(1)).unwrap();
    let node = server_node(&mut sim, server);
    let targets: Vec<ConnId> = node.connections().collect();
    assert_eq!(targets.len(), 50);
    let mut refused = Vec::new();
    let queued = node.broadcast(
        secs(1),
        &Message::new(&Header::new(18, 4), b"new block 700001"),
        Priority::Normal,
        targets,
        |id, e| refused.push((id, e)),
    );
    assert_eq!((queued, refused.len()), (50, 0));
    sim.run_until(secs(5)).unwrap();
    for &(host, _) in &clients {
        let got: Vec<_> = sim
            .host::<NodeHost>(host)
            .messages()
            .into_iter()
            .filter(|(_, h, _)| h.service_id == 18)
            .collect();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].2, b"new block 700001");
    }
}

/// A network whose links cut writes into pieces of at most `max_chunk` bytes, with an echo
/// server on it (dropping every `drop_every`th request, if set).
fn sim_with_echo_server(seed: u64, max_chunk: usize, drop_every: Option<i32>) -> (Sim, HostId) {
    let mut sim = Sim::new(
        seed,
        LinkModel {
            max_chunk,
            ..LinkModel::default()
        },
    );
    let server = sim.add_host(
        "server",
        NodeHost::new(sim.now(), NodeConfig::default(), Echo { drop_every }),
    );
    (sim, server)
}

#[test]
fn a_thousand_concurrent_requests_are_matched_and_time_out() {
    let (mut sim, server) = sim_with_echo_server(26, 333, Some(10));
    // 49 quiet peers, and the client making the requests.
    let server_addr = sim.addr(server);
    for i in 0..49 {
        let mut h = NodeHost::new(sim.now(), NodeConfig::default(), ());
        h.node.connect(sim.now(), server_addr).unwrap();
        sim.add_host(&format!("peer{i}"), h);
    }
    let mut host = NodeHost::new(sim.now(), NodeConfig::default(), ());
    let id = host.node.connect(sim.now(), server_addr).unwrap();
    let mut sent = BTreeMap::new();
    for i in 0..1000u32 {
        let mut body = Writer::new(Vec::new());
        body.add(1, u64::from(i));
        let body = body.finish().unwrap();
        let rid = host
            .node
            .request(
                Instant::ZERO,
                id,
                Message::new(&Header::new(3, 0), &body),
                Duration::from_secs(10),
            )
            .unwrap();
        sent.insert(rid, u64::from(i));
    }
    let client = sim.add_host("client", host);
    sim.run_until(secs(20)).unwrap();
    let c = sim.host::<NodeHost>(client);
    let mut answered = BTreeSet::new();
    let mut timed_out = BTreeSet::new();
    for (t, o) in &c.log {
        match o {
            NodeReceived::Reply {
                request,
                header,
                body,
                ..
            } => {
                // The reply is for exactly this request: same request id, same payload.
                assert_eq!(header.request_id(), Some(request.0));
                let n = Reader::new(body)
                    .next()
                    .unwrap()
                    .unwrap()
                    .value
                    .as_u64()
                    .unwrap();
                assert_eq!(sent[request], n);
                assert!(answered.insert(*request));
            }
            NodeReceived::RequestFailed { request, error, .. } => {
                assert_eq!(*error, RequestError::Timeout);
                assert_eq!(*t, secs(10));
                assert!(timed_out.insert(*request));
            }
            NodeReceived::Message { .. } => panic!("a reply was not matched"),
            _ => {}
        }
    }
    assert_eq!(answered.len(), 900);
    assert_eq!(timed_out.len(), 100);
    assert!(timed_out.iter().all(|r| r.0 % 10 == 0));
    assert_eq!(c.node.usage().requests, 0);
}

/// A client that takes sequences chunk by chunk gets a large reply as pieces matched to its
/// request (start, every chunk in order, end), never as a routed message.
#[test]
fn a_large_reply_to_a_chunked_client_comes_as_reply_parts() {
    let (mut sim, server) = sim_with_echo_server(27, 1000, None);
    let mut config = NodeConfig::default();
    config.connection.sequence_delivery = flowee_proto::connection::SequenceDelivery::Chunks;
    let mut host = NodeHost::new(sim.now(), config, ());
    let id = host.node.connect(sim.now(), sim.addr(server)).unwrap();
    let body: Vec<u8> = (0..20_000u32).map(|i| (i * 13) as u8).collect();
    let rid = host
        .node
        .request(
            Instant::ZERO,
            id,
            Message::new(&Header::new(3, 0), &body),
            Duration::from_secs(10),
        )
        .unwrap();
    let client = sim.add_host("client", host);
    sim.run_until(secs(5)).unwrap();
    let c = sim.host::<NodeHost>(client);
    let parts: Vec<&str> = c
        .log
        .iter()
        .filter_map(|(_, o)| match o {
            NodeReceived::ReplyPart { request, part, .. } => {
                assert_eq!(*request, rid);
                Some(part.as_str())
            }
            NodeReceived::Reply { .. } | NodeReceived::Message { .. } => {
                panic!("the reply came whole or unmatched: {o:?}")
            }
            _ => None,
        })
        .collect();
    let chunk = |range: std::ops::Range<usize>| {
        format!(
            "chunk {} #{:016x}",
            range.len(),
            flowee_sim::fnv(&body[range])
        )
    };
    assert_eq!(parts.len(), 5, "{parts:?}");
    assert!(parts[0].starts_with("start ") && parts[0].ends_with(" 20000"));
    assert_eq!(parts[1], chunk(0..8000));
    assert_eq!(parts[2], chunk(8000..16000));
    assert_eq!(parts[3], chunk(16000..20000));
    assert_eq!(parts[4], "end 20000");
    assert_eq!(c.node.usage().requests, 0);
}

#[test]
fn a_stale_connection_id_is_refused() {
    let mut sim = Sim::new(27, LinkModel::default());
    let (server, clients) = network(&mut sim, 50, NodeConfig::default());
    sim.run_until(secs(1)).unwrap();
    let (client, cid) = clients[7];
    // The client closes; the server's id for it goes stale.
    let old: ConnId = server_node(&mut sim, server).connections().next().unwrap();
    let addr_of_old = server_node(&mut sim, server).peer(old).unwrap();
    let victim = clients
        .iter()
        .find(|(h, _)| sim.addr(*h).ip() == addr_of_old.ip())
        .map(|(h, c)| (*h, *c))
        .unwrap();
    let node = &mut sim.host_mut::<NodeHost>(victim.0).node;
    node.close(secs(1), victim.1).unwrap();
    sim.run_until(secs(2)).unwrap();
    let node = server_node(&mut sim, server);
    assert!(matches!(
        node.send(
            secs(2),
            old,
            Message::new(&Header::new(1, 1), b""),
            Priority::Normal
        ),
        Err(SendError::UnknownConnection(_))
    ));
    assert!(node.handle_input(secs(2), old, b"x").is_err());
    // A new connection reusing the slot has a new id.
    let late = sim.add_host("late", {
        let mut h = NodeHost::new(sim.now(), NodeConfig::default(), ());
        h.node.connect(sim.now(), sim.addr(server)).unwrap();
        h
    });
    sim.run_until(secs(3)).unwrap();
    let node = server_node(&mut sim, server);
    assert!(node.connections().all(|c| c != old));
    assert_eq!(node.len(), 50);
    let _ = (client, cid, late, Scope::Node);
}

/// A server that accepts, writes one valid frame and closes at once, every time.
struct Slammer {
    frame: Vec<u8>,
    out: BTreeMap<Socket, Vec<u8>>,
    actions: Vec<Action>,
    accepted: u32,
}

impl Host for Slammer {
    fn accept(&mut self, _: Instant, socket: Socket, _: SocketAddr) -> bool {
        self.accepted += 1;
        self.out.insert(socket, self.frame.clone());
        true
    }
    fn connected(&mut self, _: Instant, _: u64, _: Socket) {}
    fn connect_failed(&mut self, _: Instant, _: u64) {}
    fn input(&mut self, _: Instant, _: Socket, data: &[u8]) -> usize {
        data.len()
    }
    fn eof(&mut self, _: Instant, socket: Socket) {
        if self.out.remove(&socket).is_some() {
            self.actions.push(Action::Close(socket));
        }
    }
    fn transmit(&mut self, socket: Socket) -> Option<&[u8]> {
        self.out
            .get(&socket)
            .filter(|b| !b.is_empty())
            .map(|b| &b[..])
    }
    fn consume(&mut self, socket: Socket, n: usize) {
        if let Some(b) = self.out.get_mut(&socket) {
            b.drain(..n);
            if b.is_empty() {
                self.out.remove(&socket);
                self.actions.push(Action::Close(socket));
            }
        }
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn timeout(&mut self, _: Instant) {}
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

#[test]
fn a_server_that_accepts_and_drops_at_once_is_not_hammered() {
    let mut sim = Sim::new(31, LinkModel::default());
    let mut frame = Vec::new();
    flowee_proto::frame::FrameEncoder::new()
        .encode(&Header::new(0, 1), b"hello", &mut frame)
        .unwrap();
    let server = sim.add_host(
        "slammer",
        Slammer {
            frame,
            out: BTreeMap::new(),
            actions: Vec::new(),
            accepted: 0,
        },
    );
    let server_addr = sim.addr(server);
    let mut host = NodeHost::new(sim.now(), NodeConfig::default(), ());
    let id = host.node.connect(sim.now(), server_addr).unwrap();
    // Something to write on every connection, so writes complete and frames come in.
    host.node
        .send(
            Instant::ZERO,
            id,
            Message::new(&Header::new(9, 0), b"queued"),
            Priority::Normal,
        )
        .unwrap();
    let client = sim.add_host("client", host);
    sim.run_until(secs(300)).unwrap();
    let c = sim.host::<NodeHost>(client);
    let attempts: Vec<u32> = c
        .log
        .iter()
        .filter_map(|(_, o)| match o {
            NodeReceived::Reconnecting { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .collect();
    // Backed off 0, 4, 13, 32, 44… s: about ten connections in five minutes.
    assert!(attempts.len() <= 12, "{attempts:?}");
    assert_eq!(attempts[..5], [1, 2, 3, 4, 5]);
    assert!(sim.host::<Slammer>(server).accepted <= 12);
}
