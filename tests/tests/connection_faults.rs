//! Connections that break: link resets and sudden EOF in the middle of traffic. Each broken
//! connection reports exactly one `Closed` with [`CloseReason::Eof`], nothing after it, and
//! hands the messages it did not finish sending to the next connection
//! ([`Connection::take_outbox`], [`Connection::with_outbox`]); sends after the close come back
//! as [`SendError::Closed`] with the message. Across the chain of connections every message
//! arrives at most once, in order per priority, with the same body; the only ones missing are
//! those fully written to a link that then broke (TCP loses them too).

use flowee_proto::connection::SequenceDelivery;
use flowee_proto::{
    CloseReason, Config, Connection, Header, Instant, Message, Priority, Role, SendError,
};
use flowee_sim::{ConnectionHost, HostId, LinkModel, Received, Sim};
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

#[derive(Clone, Debug)]
struct Send {
    at_ms: u64,
    high: bool,
    len: usize,
}

/// A fault the script applies to the connection in use at that time.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// The link is reset: data in flight is lost, both ends see EOF at once.
    Reset,
    /// The server's end closes under it: the client sees EOF after the data in flight.
    Eof,
}

#[derive(Clone, Debug)]
struct Scenario {
    seed: u64,
    link: LinkModel,
    ping_interval_ms: u64,
    chunks: bool,
    sends: Vec<Send>,
    faults: Vec<(u64, Fault)>,
}

/// At most this many high-priority sends (the high queue holds 20 messages).
const MAX_HIGH: usize = 8;

impl Arbitrary for Scenario {
    fn arbitrary(g: &mut Gen) -> Self {
        let pick = |g: &mut Gen, lo: u64, hi: u64| lo + u64::arbitrary(g) % (hi - lo + 1);
        let link = LinkModel {
            latency: Duration::from_millis(pick(g, 0, 30)),
            jitter: Duration::from_millis(pick(g, 0, 10)),
            max_chunk: *g.choose(&[7, 100, 1500, 9000]).unwrap(),
            stall_chance: *g.choose(&[0.0, 0.01]).unwrap(),
            stall: Duration::from_millis(pick(g, 1, 300)),
            buffer: pick(g, 1024, 64 * 1024) as usize,
            reset_chance: *g.choose(&[0.0, 0.0005, 0.002, 0.01]).unwrap(),
        };
        let n = usize::arbitrary(g) % 30;
        let mut highs = 0;
        let sends = (0..n)
            .map(|_| {
                let high = highs < MAX_HIGH && u8::arbitrary(g) % 4 == 0;
                highs += usize::from(high);
                let len = match u8::arbitrary(g) % 6 {
                    0 => pick(g, 8001, 60_000) as usize,
                    1 => 8000,
                    2 => 0,
                    _ => pick(g, 1, 300) as usize,
                };
                Send {
                    at_ms: pick(g, 0, 10_000),
                    high,
                    len: if high { len.min(8000) } else { len },
                }
            })
            .collect();
        let faults = (0..usize::arbitrary(g) % 4)
            .map(|_| {
                let fault = if bool::arbitrary(g) {
                    Fault::Reset
                } else {
                    Fault::Eof
                };
                (pick(g, 0, 12_000), fault)
            })
            .collect();
        Scenario {
            seed: u64::arbitrary(g),
            link,
            ping_interval_ms: pick(g, 500, 5000),
            chunks: u8::arbitrary(g) % 4 == 0,
            sends,
            faults,
        }
    }
}

fn body(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|k| (k.wrapping_mul(31) ^ i) as u8).collect()
}

fn priority(high: bool) -> Priority {
    if high {
        Priority::High
    } else {
        Priority::Normal
    }
}

/// Complete messages in a log (reassembled from chunks if delivered that way).
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

/// One connection of the chain.
#[derive(Debug, Default)]
struct Link {
    client: Option<HostId>,
    server: Option<HostId>,
    /// Per priority (normal, high): the message indices this connection had to send, in
    /// order: those handed over by the previous one, then those sent to it.
    queue: [Vec<usize>; 2],
    /// Per priority: how many its outbox handed on when it closed.
    handed_on: Option<[usize; 2]>,
    /// A scripted EOF hit it (the server's end was closed under the server's connection).
    eof: bool,
}

#[derive(Debug, Default)]
struct Chain {
    links: Vec<Link>,
    /// Sends refused with `SendError::Closed` since the last handover, to queue on the next.
    refused: Vec<usize>,
}

impl Chain {
    fn current(&self) -> &Link {
        self.links.last().expect("a connection")
    }
}

/// Adds a server and a client that starts with `conn`, and connects them.
fn open(sim: &mut Sim, chain: &mut Chain, conn: Connection, queue: [Vec<usize>; 2]) {
    let k = chain.links.len();
    let config = *conn.config();
    let server = sim.add_host(&format!("server{k}"), ConnectionHost::server(config, ()));
    let client = sim.add_host(&format!("client{k}"), ConnectionHost::client_from(conn, ()));
    sim.connect(client, server, 0);
    chain.links.push(Link {
        client: Some(client),
        server: Some(server),
        queue,
        ..Link::default()
    });
}

/// If the current client closed: takes its outbox, adds the refused sends, and starts the
/// next connection with it.
fn hand_over(sim: &mut Sim, chain: &mut Chain, sends: &[Send]) -> Result<(), String> {
    let client = chain.current().client.unwrap();
    let now = sim.now();
    let conn = sim.host_mut::<ConnectionHost>(client).conn();
    if !conn.is_closed() {
        return Ok(());
    }
    let mut outbox = conn
        .take_outbox()
        .ok_or("no outbox from a closed connection")?;
    if !conn.take_outbox().is_some_and(|o| o.is_empty()) {
        return Err("a second take_outbox was not empty".into());
    }
    let config = *conn.config();
    let (high, normal) = outbox.len();
    let link = chain.links.last_mut().unwrap();
    link.handed_on = Some([normal, high]);
    let mut next: [Vec<usize>; 2] = [0, 1].map(|p| {
        let q = &link.queue[p];
        q[q.len().saturating_sub([normal, high][p])..].to_vec()
    });
    for i in std::mem::take(&mut chain.refused) {
        let b = body(i, sends[i].len);
        outbox
            .send(
                Message::new(&Header::new(5, i as i32), &b),
                priority(sends[i].high),
            )
            .map_err(|_| format!("message {i} refused by the outbox"))?;
        next[usize::from(sends[i].high)].push(i);
    }
    let conn = Connection::with_outbox(now, Role::Connecting, config, outbox);
    open(sim, chain, conn, next);
    Ok(())
}

fn check(s: Scenario) -> TestResult {
    match run(&s) {
        Ok(_) => TestResult::passed(),
        Err(e) => {
            eprintln!("{e}");
            TestResult::failed()
        }
    }
}

/// What one connection of the chain did, in messages: queued, received, handed on.
#[derive(Debug, PartialEq)]
struct Done {
    queued: usize,
    received: usize,
    handed_on: usize,
}

/// Runs a scenario; returns what each connection of the chain did.
fn run(s: &Scenario) -> Result<Vec<Done>, String> {
    let config = Config {
        ping_interval: Duration::from_millis(s.ping_interval_ms),
        pong_timeout: Some(Duration::from_secs(60)),
        sequence_delivery: if s.chunks {
            SequenceDelivery::Chunks
        } else {
            SequenceDelivery::Reassemble
        },
        ..Config::default()
    };
    let mut sim = Sim::new(s.seed, s.link);
    let chain = Rc::new(RefCell::new(Chain::default()));
    let first = Connection::connecting(sim.now(), config);
    open(&mut sim, &mut chain.borrow_mut(), first, Default::default());
    for (i, m) in s.sends.iter().enumerate() {
        let at = Instant::from_millis(m.at_ms + 100);
        let (len, high, chain) = (m.len, m.high, chain.clone());
        sim.at(at, move |sim| {
            let mut chain = chain.borrow_mut();
            let client = chain.current().client.unwrap();
            let b = body(i, len);
            let c = sim.host_mut::<ConnectionHost>(client).conn();
            match c.send(
                at,
                Message::new(&Header::new(5, i as i32), &b),
                priority(high),
            ) {
                Ok(()) => chain.links.last_mut().unwrap().queue[usize::from(high)].push(i),
                Err(SendError::Closed(m)) => {
                    assert_eq!((*m.header, m.body), (Header::new(5, i as i32), &b[..]));
                    chain.refused.push(i);
                }
                Err(_) => panic!("message {i} ({len} bytes, high: {high}) refused"),
            }
        });
    }
    for &(at_ms, fault) in &s.faults {
        let chain = chain.clone();
        sim.at(Instant::from_millis(at_ms + 100), move |sim| {
            let mut chain = chain.borrow_mut();
            let client = chain.current().client.unwrap();
            let host = sim.host::<ConnectionHost>(client);
            let closed = host.connection().is_none_or(Connection::is_closed);
            let (Some(socket), false) = (host.socket(), closed) else {
                return; // not up, or already broken
            };
            match fault {
                Fault::Reset => sim.reset(socket),
                Fault::Eof => {
                    sim.eof(socket);
                    chain.links.last_mut().unwrap().eof = true;
                }
            }
        });
    }
    // Broken connections are replaced within 250 ms; after the faults the link heals, so the
    // last connection has time to send everything.
    let heal = Instant::from_secs(13);
    let end = Instant::from_secs(60);
    let mut t = Instant::ZERO;
    while t < end {
        t = t + Duration::from_millis(250);
        if t >= heal {
            sim.set_link(LinkModel {
                reset_chance: 0.0,
                ..s.link
            });
        }
        sim.run_until(t).map_err(|e| e.to_string())?;
        hand_over(&mut sim, &mut chain.borrow_mut(), &s.sends)?;
    }
    let chain = chain.borrow();
    if !chain.refused.is_empty() {
        return Err(format!("refused and never resent: {:?}", chain.refused));
    }
    let last = chain.links.len() - 1;
    let mut done = Vec::new();
    for (k, link) in chain.links.iter().enumerate() {
        let received = check_link(&sim, k, link, &s.sends, k == last)
            .map_err(|e| format!("connection {k}: {e}"))?;
        done.push(Done {
            queued: link.queue.iter().map(Vec::len).sum(),
            received,
            handed_on: link.handed_on.unwrap_or_default().iter().sum(),
        });
    }
    Ok(done)
}

/// Checks the closes, and what arrived, of one connection of the chain; returns how many
/// messages arrived.
fn check_link(
    sim: &Sim,
    k: usize,
    link: &Link,
    sends: &[Send],
    last: bool,
) -> Result<usize, String> {
    let client = sim.host::<ConnectionHost>(link.client.unwrap());
    let server = sim.host::<ConnectionHost>(link.server.unwrap());
    let closes = |log: &[(Instant, Received)]| -> Result<Option<CloseReason>, String> {
        let at: Vec<usize> = (0..log.len())
            .filter(|&n| matches!(log[n].1, Received::Closed(_)))
            .collect();
        match at[..] {
            [] => Ok(None),
            [n] if n == log.len() - 1 => match log[n].1 {
                Received::Closed(r) => Ok(Some(r)),
                _ => unreachable!(),
            },
            [n] => Err(format!("events after Closed: {:?}", &log[n..])),
            _ => Err(format!("{} Closed events", at.len())),
        }
    };
    let client_closed = closes(&client.log)?;
    let server_closed = closes(&server.log)?;
    match (last, link.handed_on.is_some(), client_closed) {
        (false, true, Some(CloseReason::Eof)) | (true, false, None) => {}
        other => return Err(format!("client: (last, handed on, closed) {other:?}")),
    }
    // A reset reaches both ends; a server whose end was closed under it only times out.
    let server_ok = match server_closed {
        Some(CloseReason::Eof) => client_closed.is_some() && !link.eof,
        None => client_closed.is_none() || link.eof,
        Some(CloseReason::PingTimeout) => link.eof,
        _ => false,
    };
    if !server_ok {
        return Err(format!(
            "server closed with {server_closed:?} (client {client_closed:?}, eof {})",
            link.eof
        ));
    }
    // Per priority: the server received a prefix of the queue, the outbox handed on a suffix,
    // and what lies between was written out whole (lost with the link).
    let mut got: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
    for (header, b) in received(&server.log) {
        let i = header
            .message_id
            .and_then(|i| usize::try_from(i).ok())
            .filter(|&i| i < sends.len() && header == Header::new(5, i as i32))
            .ok_or_else(|| format!("unexpected message {header:?}"))?;
        if b != body(i, sends[i].len) {
            return Err(format!("message {i} arrived changed"));
        }
        got[usize::from(sends[i].high)].push(i);
    }
    let left = link.handed_on.unwrap_or([0, 0]);
    let mut written = 0;
    for p in 0..2 {
        let queue = &link.queue[p];
        if got[p][..] != queue[..got[p].len().min(queue.len())] || got[p].len() > queue.len() {
            return Err(format!(
                "priority {p}: received {:?}, queued {queue:?}",
                got[p]
            ));
        }
        if got[p].len() + left[p] > queue.len() {
            return Err(format!(
                "priority {p}: received {:?} and handed on {} of {queue:?}",
                got[p], left[p]
            ));
        }
        if last && got[p] != *queue {
            return Err(format!(
                "priority {p}: the last connection delivered {:?} of {queue:?}",
                got[p]
            ));
        }
        written += queue.len() - left[p];
    }
    let out = client.stats().messages_out;
    if out != written as u64 {
        return Err(format!(
            "{out} messages written, {written} not handed on (connection {k})"
        ));
    }
    Ok(got[0].len() + got[1].len())
}

#[test]
fn random_resets_and_eofs_close_once_and_lose_nothing_unsent() {
    QuickCheck::new()
        .tests(60)
        .max_tests(200)
        .quickcheck(check as fn(Scenario) -> TestResult);
}

fn scripted(faults: Vec<(u64, Fault)>) -> Scenario {
    Scenario {
        seed: 7,
        link: LinkModel {
            latency: Duration::from_millis(5),
            jitter: Duration::ZERO,
            max_chunk: 1500,
            buffer: 8 * 1024,
            ..LinkModel::default()
        },
        ping_interval_ms: 1000,
        chunks: false,
        sends: (0..24)
            .map(|i| Send {
                at_ms: i as u64 * 5,
                high: i % 5 == 0,
                len: match (i % 5, i % 3) {
                    (0, _) => 300,
                    (_, 0) => 20_000,
                    (_, 1) => 8000,
                    _ => 100,
                },
            })
            .collect(),
        faults,
    }
}

/// The first connection broke in the middle: some messages arrived, some did not; every
/// message arrived or was lost with a broken link.
fn broke_in_the_middle(done: &[Done]) {
    let first = &done[0];
    assert!(first.received > 0, "{done:?}");
    assert!(first.received < first.queued, "{done:?}");
    assert_eq!(
        done.iter().map(|d| d.received).sum::<usize>() + lost(done),
        24,
        "{done:?}"
    );
}

/// Messages written whole to a link that broke.
fn lost(done: &[Done]) -> usize {
    done.iter()
        .map(|d| d.queued - d.received - d.handed_on)
        .sum()
}

#[test]
fn a_reset_in_the_middle_hands_the_rest_to_the_next_connection() {
    let done = run(&scripted(vec![(40, Fault::Reset)])).unwrap();
    assert_eq!(done.len(), 2, "{done:?}");
    broke_in_the_middle(&done);
    // The reset came while the client was still writing: its outbox kept the rest.
    assert!(done[0].handed_on > 0, "{done:?}");
}

#[test]
fn a_sudden_eof_in_the_middle_hands_the_rest_to_the_next_connection() {
    let done = run(&scripted(vec![(40, Fault::Eof)])).unwrap();
    assert_eq!(done.len(), 2, "{done:?}");
    broke_in_the_middle(&done);
    // Until the EOF arrived the client wrote into a socket nobody read: those are lost. What
    // was sent after the close came back refused and went on the next connection.
    assert!(lost(&done) > 0, "{done:?}");
    assert!(done[1].queued > 0, "{done:?}");
}

#[test]
fn repeated_faults_make_a_chain_of_connections() {
    let faults = vec![
        (30, Fault::Reset),
        (500, Fault::Eof),
        (900, Fault::Reset),
        (2000, Fault::Eof),
    ];
    let done = run(&scripted(faults)).unwrap();
    assert_eq!(done.len(), 5, "{done:?}");
    broke_in_the_middle(&done);
}
