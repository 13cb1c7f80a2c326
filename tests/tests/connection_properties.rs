//! Random scenarios keep the invariants: every message sent on a live connection arrives once,
//! in order per priority, with the same body; no deadline is ever stale (checked by the hosts
//! after every timeout); memory stays within the configured bounds.

use flowee_proto::connection::SequenceDelivery;
use flowee_proto::{Config, Header, Instant, Message, Priority};
use flowee_sim::{ConnectionHost, LinkModel, Received, Sim};
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};
use std::num::NonZeroUsize;
use std::time::Duration;

#[derive(Clone, Debug)]
struct Send {
    at_ms: u64,
    from_client: bool,
    high: bool,
    len: usize,
}

#[derive(Clone, Debug)]
struct Scenario {
    seed: u64,
    link: LinkModel,
    ping_interval_ms: u64,
    receive_buffer: usize,
    chunks: bool,
    sends: Vec<Send>,
}

impl Arbitrary for Scenario {
    fn arbitrary(g: &mut Gen) -> Self {
        let pick = |g: &mut Gen, lo: u64, hi: u64| lo + u64::arbitrary(g) % (hi - lo + 1);
        let link = LinkModel {
            latency: Duration::from_millis(pick(g, 0, 50)),
            jitter: Duration::from_millis(pick(g, 0, 20)),
            max_chunk: *g.choose(&[1, 7, 100, 1500, 9000, 65_536]).unwrap(),
            stall_chance: *g.choose(&[0.0, 0.001, 0.05]).unwrap(),
            stall: Duration::from_millis(pick(g, 1, 500)),
            buffer: pick(g, 1024, 256 * 1024) as usize,
            reset_chance: 0.0,
        };
        let n = usize::arbitrary(g) % 40;
        let sends = (0..n)
            .map(|_| {
                let high = u8::arbitrary(g) % 4 == 0;
                let len = match u8::arbitrary(g) % 6 {
                    0 => pick(g, 8001, 60_000) as usize,
                    1 => 8000,
                    2 => 0,
                    _ => pick(g, 1, 300) as usize,
                };
                Send {
                    at_ms: pick(g, 0, 20_000),
                    from_client: bool::arbitrary(g),
                    high,
                    len: if high { len.min(8000) } else { len },
                }
            })
            .collect();
        Scenario {
            seed: u64::arbitrary(g),
            link,
            ping_interval_ms: pick(g, 500, 10_000),
            receive_buffer: pick(g, 9000, 100_000) as usize,
            chunks: u8::arbitrary(g) % 4 == 0,
            sends,
        }
    }
}

fn body(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|k| (k.wrapping_mul(31) ^ i) as u8).collect()
}

fn received(log: &[(Instant, Received)]) -> Vec<(Header, Vec<u8>)> {
    let mut out = Vec::new();
    let mut open: Option<(Header, Vec<u8>)> = None;
    for (_, e) in log {
        match e {
            Received::Message { header, body } => out.push((*header, body.clone())),
            Received::SequenceStart { header, .. } => open = Some((*header, Vec::new())),
            Received::SequenceChunk(d) => open.as_mut().expect("chunk in a sequence").1.extend(d),
            Received::SequenceEnd { .. } => out.push(open.take().expect("an open sequence")),
            _ => {}
        }
    }
    out
}

fn check(s: Scenario) -> TestResult {
    match run(&s) {
        Ok(()) => TestResult::passed(),
        Err(e) => {
            eprintln!("{e}");
            TestResult::failed()
        }
    }
}

fn run(s: &Scenario) -> Result<(), String> {
    let config = Config {
        ping_interval: Duration::from_millis(s.ping_interval_ms),
        pong_timeout: Some(Duration::from_secs(60)),
        receive_buffer: NonZeroUsize::new(s.receive_buffer).unwrap(),
        sequence_delivery: if s.chunks {
            SequenceDelivery::Chunks
        } else {
            SequenceDelivery::Reassemble
        },
        ..Config::default()
    };
    let mut sim = Sim::new(s.seed, s.link);
    let server = sim.add_host("server", ConnectionHost::server(config, ()));
    let client = sim.add_host("client", ConnectionHost::client(sim.now(), config, ()));
    sim.connect(client, server, 0);
    let largest = s.sends.iter().map(|m| m.len).max().unwrap_or(0);
    for (i, m) in s.sends.iter().enumerate() {
        let (host, len, high) = (if m.from_client { client } else { server }, m.len, m.high);
        let at = Instant::from_millis(m.at_ms + 100);
        sim.at(at, move |sim| {
            let b = body(i, len);
            let prio = if high {
                Priority::High
            } else {
                Priority::Normal
            };
            let c = sim.host_mut::<ConnectionHost>(host).conn();
            c.send(at, Message::new(&Header::new(5, i as i32), &b), prio)
                .expect("queues are large enough");
        });
    }
    // Memory checks along the way.
    for t in (0..40).map(|k| Instant::from_millis(k * 1000 + 1)) {
        sim.at(t, move |sim| {
            for h in [client, server] {
                let Some(c) = sim.host::<ConnectionHost>(h).connection() else {
                    continue;
                };
                let u = c.heap_usage();
                assert!(u.receive <= config.receive_buffer.get().max(9000), "{u:?}");
                assert!(u.reassembly <= (2 * largest).max(512), "{u:?}");
                assert!(u.normal_queue <= config.normal_queue_bytes.get(), "{u:?}");
                assert!(u.high_queue <= config.high_queue_bytes.get(), "{u:?}");
            }
        });
    }
    if let Err(e) = sim.run_until(Instant::from_secs(120)) {
        return Err(format!("{e}"));
    }
    for (to, from_client) in [(server, true), (client, false)] {
        let got = received(&sim.host::<ConnectionHost>(to).log);
        let direction = if from_client {
            "client to server"
        } else {
            "server to client"
        };
        // Every message that arrived must be one sent this way; sort them by priority.
        let mut got_ids: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
        for (header, b) in &got {
            let i = header
                .message_id
                .and_then(|i| usize::try_from(i).ok())
                .filter(|&i| {
                    s.sends.get(i).is_some_and(|m| m.from_client == from_client)
                        && *header == Header::new(5, i as i32)
                })
                .ok_or_else(|| format!("{direction}: unexpected message {header:?}"))?;
            if *b != body(i, s.sends[i].len) {
                return Err(format!("{direction}: message {i} arrived changed"));
            }
            got_ids[usize::from(s.sends[i].high)].push(i);
        }
        // Per priority: each message sent exactly once, in the order it was sent.
        for high in [true, false] {
            let mut expected: Vec<usize> = (0..s.sends.len())
                .filter(|&i| s.sends[i].from_client == from_client && s.sends[i].high == high)
                .collect();
            expected.sort_by_key(|&i| (s.sends[i].at_ms, i));
            let got = &got_ids[usize::from(high)];
            if *got != expected {
                return Err(format!(
                    "{direction} (high={high}): received {got:?}, sent {expected:?}"
                ));
            }
        }
    }
    for h in [client, server] {
        if let Some((t, r)) = sim.host::<ConnectionHost>(h).closed() {
            return Err(format!("{} closed at {t:?}: {r}", sim.name(h)));
        }
    }
    Ok(())
}

#[test]
fn random_scenarios_keep_the_invariants() {
    QuickCheck::new()
        .tests(60)
        .max_tests(200)
        .quickcheck(check as fn(Scenario) -> TestResult);
}

#[test]
fn a_slow_reader_still_gets_everything_in_order() {
    let s = Scenario {
        seed: 99,
        link: LinkModel {
            max_chunk: 1,
            buffer: 1024,
            ..LinkModel::default()
        },
        ping_interval_ms: 500,
        receive_buffer: 9000,
        chunks: false,
        sends: (0..10)
            .map(|i| Send {
                at_ms: i,
                from_client: i % 2 == 0,
                high: i % 3 == 0,
                len: if i == 4 { 20_000 } else { 100 },
            })
            .collect(),
    };
    run(&s).unwrap();
}
