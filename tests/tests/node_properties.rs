//! Random mixes of good, silent, garbage-sending and flooding peers against one node keep the
//! invariants: no good peer is ever banned or closed, every bad one is closed, the node's
//! tables stay within their bounds, and no deadline is stale (checked by the hosts after every
//! timeout).

use flowee_proto::frame::PING_FRAME;
use flowee_proto::node::NodeConfig;
use flowee_proto::{Header, Instant, Message, Priority};
use flowee_sim::{LinkModel, NodeHost, NodeReceived, RawHost, Sim};
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};
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
}

#[derive(Clone, Debug)]
struct Mix {
    seed: u64,
    peers: Vec<(u64, Peer)>,
    max_chunk: usize,
}

impl Arbitrary for Mix {
    fn arbitrary(g: &mut Gen) -> Self {
        let n = 1 + usize::arbitrary(g) % 30;
        let peers = (0..n)
            .map(|_| {
                let start = u64::arbitrary(g) % 120;
                let peer = match u8::arbitrary(g) % 5 {
                    0 | 1 => Peer::Good(u8::arbitrary(g) % 20),
                    2 => Peer::Silent,
                    3 => Peer::Garbage(u8::arbitrary(g)),
                    _ => Peer::Flood(200 + u16::arbitrary(g) % 2000),
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
        Ok(()) => TestResult::passed(),
        Err(e) => {
            eprintln!("{e}");
            TestResult::failed()
        }
    }
}

fn run(mix: &Mix) -> Result<(), String> {
    let link = LinkModel {
        max_chunk: mix.max_chunk,
        ..LinkModel::default()
    };
    let cfg = NodeConfig::default();
    let mut sim = Sim::new(mix.seed, link);
    let server = sim.add_host("server", NodeHost::new(sim.now(), cfg.clone(), ()));
    let server_addr = sim.addr(server);
    let mut good = Vec::new();
    let mut bad = Vec::new();
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
                            Message::new(Header::new(4, i32::from(k)), &[k; 100]),
                            Priority::Normal,
                        )
                        .unwrap();
                    }
                });
                good.push((host, n));
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

    let s = sim.host::<NodeHost>(server);
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
    let p = s.peak;
    if p.connections > cfg.max_connections.get()
        || p.bans > cfg.max_bans.get()
        || p.scores > cfg.max_scores.get()
        || p.rate_log > cfg.rate_log_len.get()
        || p.requests > cfg.max_pending_requests.get()
        || p.timers > 4 * (p.slots + p.requests) + 64 + 1
    {
        return Err(format!("tables over their bounds: {p:?}"));
    }
    Ok(())
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
        ],
        max_chunk: 100,
    };
    run(&mix).unwrap();
}
