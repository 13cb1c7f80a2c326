//! Steady state allocates nothing per message: once buffers have grown to the traffic, a
//! `Connection` pair, and a `Node` pair with services answering through `flowee-service`'s
//! dispatch, move small messages and 1 MiB sequences with zero heap allocations.
//!
//! Allocations are counted on the test's own thread, which runs every node, connection and
//! service here: whatever the test harness's other threads allocate meanwhile is not ours.

use flowee_proto::Instant;
use flowee_proto::connection::{Config, Connection, Event, Message, Priority};
use flowee_proto::header::Header;
use flowee_proto::node::{ConnId, Node, NodeConfig, Scope};
use flowee_service::{Actions, Dispatch, Request, Responder, Service};
use flowee_sim::counting::{self, Counting};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[global_allocator]
static ALLOC: Counting = Counting;

#[test]
fn steady_state_allocates_nothing_per_message() {
    connection_pair(100, 20_000, 1000);
    connection_pair(1 << 20, 32, 8);
    node_pair_with_services(100, 20_000, 500);
    node_pair_with_services(1 << 20, 32, 4);
}

/// The counter the test relies on sees this thread's allocations, and not another thread's.
#[test]
fn the_counter_sees_this_threads_allocations_only() {
    let mine = counting::thread_allocations();
    let kept: Vec<Box<u64>> = (0..100).map(Box::new).collect();
    assert!(
        counting::thread_allocations() - mine >= 101,
        "100 boxes and their vector"
    );
    drop(kept);
    let (mine, all) = (counting::thread_allocations(), counting::allocations());
    std::thread::spawn(|| (0..1000).map(Box::new).collect::<Vec<_>>().len())
        .join()
        .unwrap();
    // Starting and joining a thread allocates a little here; the thousand boxes are not ours.
    assert!(counting::thread_allocations() - mine < 100);
    assert!(counting::allocations() - all >= 1000);
}

/// Allocations made by `f` (on this thread).
fn allocations(f: impl FnOnce()) -> usize {
    let before = counting::thread_allocations();
    f();
    counting::thread_allocations() - before
}

/// A client and a server connection in memory: `count` messages of `size` bytes in batches
/// of `batch`, after a warm-up of the same traffic.
fn connection_pair(size: usize, count: usize, batch: usize) {
    let now = Instant::ZERO;
    let mut client: Connection = Connection::connecting(now, Config::default());
    let mut server: Connection = Connection::accepted(now, Config::default());
    client.handle_connected(now);
    server.handle_connected(now);
    let body: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let mut run = |messages: usize| {
        let mut seen = 0;
        for _ in 0..messages / batch {
            for _ in 0..batch {
                client
                    .send(
                        now,
                        Message::new(&Header::new(3, 2), &body),
                        Priority::Normal,
                    )
                    .unwrap();
            }
            while let Some(data) = client.poll_transmit() {
                let n = data.len();
                let mut input = data;
                while !input.is_empty() {
                    let taken = server.handle_input(now, input);
                    input = &input[taken..];
                    while let Some(event) = server.poll_event() {
                        if let Event::Message(m) = event {
                            assert_eq!(m.body.len(), size);
                            seen += 1;
                        }
                    }
                }
                client.consume_transmit(n);
            }
        }
        assert_eq!(seen, messages / batch * batch);
    };
    run(count);
    let n = allocations(|| run(count));
    assert_eq!(
        n, 0,
        "Connection pair, {size}-byte messages: {n} allocations"
    );
}

/// Replies to every message with the same header and body.
struct Echo;

impl Service for Echo {
    fn call(&self, request: &Request<'_>, out: &mut Responder<'_>) {
        let _ = out.reply(request.message);
    }
}

/// Counts echoes and sends the next message while any are left.
struct Pump {
    body: Vec<u8>,
    left: AtomicU64,
    echoed: Arc<AtomicU64>,
}

impl Service for Pump {
    fn call(&self, request: &Request<'_>, out: &mut Responder<'_>) {
        assert_eq!(request.message.body.len(), self.body.len());
        self.echoed.fetch_add(1, Ordering::Relaxed);
        if self.left.load(Ordering::Relaxed) > 0 {
            self.left.fetch_sub(1, Ordering::Relaxed);
            out.reply(Message::new(&Header::new(3, 2), &self.body))
                .unwrap();
        }
    }
}

/// Two nodes in memory, each with a `Dispatch`: the server echoes, the client sends the next
/// message as each echo comes back, `window` in flight.
fn node_pair_with_services(size: usize, count: u64, window: usize) {
    let now = Instant::ZERO;
    let mut server: Node = Node::new(now, NodeConfig::default());
    let mut client: Node = Node::new(now, NodeConfig::default());
    let (mut sd, mut cd) = (Dispatch::default(), Dispatch::default());
    let (mut sa, mut ca) = (Actions::default(), Actions::default());
    let peer: SocketAddr = "10.0.0.1:1235".parse().unwrap();
    let sid = server.accept(now, peer).unwrap();
    sd.add_peer(sid, peer);
    let cid = client.connect(now, peer).unwrap();
    cd.add_peer(cid, peer);
    cd.pump(&mut client, now, &mut ca);
    assert_eq!(ca.connect, [(cid, peer)]);
    client.handle_connected(now, cid).unwrap();
    let h = server.open_handle(Scope::Node).unwrap();
    server.subscribe(h, 3, None).unwrap();
    sd.set_sink(h, Some(Arc::new(Echo)));
    let echoed = Arc::new(AtomicU64::new(0));
    let body: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let pump = Arc::new(Pump {
        body: body.clone(),
        left: AtomicU64::new(0),
        echoed: echoed.clone(),
    });
    let h = client.open_handle(Scope::Node).unwrap();
    client.subscribe(h, 3, None).unwrap();
    cd.set_sink(h, Some(pump.clone() as Arc<dyn Service>));

    let mut run = |messages: u64| {
        echoed.store(0, Ordering::Relaxed);
        pump.left.store(messages - window as u64, Ordering::Relaxed);
        for _ in 0..window {
            client
                .send(
                    now,
                    cid,
                    Message::new(&Header::new(3, 2), &body),
                    Priority::Normal,
                )
                .unwrap();
        }
        while echoed.load(Ordering::Relaxed) < messages {
            cd.pump(&mut client, now, &mut ca);
            carry(&mut client, cid, &mut server, sid);
            sd.pump(&mut server, now, &mut sa);
            carry(&mut server, sid, &mut client, cid);
        }
    };
    run(count);
    let n = allocations(|| run(count));
    assert_eq!(
        n, 0,
        "Node pair with services, {size}-byte messages: {n} allocations"
    );
}

/// Moves what `from` has for `fid` into `to` as input of `tid`.
fn carry(from: &mut Node, fid: ConnId, to: &mut Node, tid: ConnId) {
    let now = Instant::ZERO;
    while let Some(data) = from.poll_transmit(fid) {
        let n = data.len();
        let mut input = data;
        while !input.is_empty() {
            let taken = to.handle_input(now, tid, input).unwrap();
            input = &input[taken..];
            if taken == 0 {
                break;
            }
        }
        let written = n - input.len();
        from.consume_transmit(fid, written);
        if written < n {
            break;
        }
    }
}
