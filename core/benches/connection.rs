//! The pure protocol cost per message: a client and a server `Connection` in memory, no
//! sockets. The client queues messages, its transmit slices go straight into the server, and
//! the server's events are taken, as an adapter would.
//!
//! `cargo bench -p flowee-proto --bench connection`. Items are messages.

use divan::counter::{BytesCount, ItemsCount};
use divan::{Bencher, black_box};
use flowee_proto::Instant;
use flowee_proto::connection::{Config, Connection, Event, Message, Priority};
use flowee_proto::header::Header;

fn main() {
    divan::main();
}

/// Messages per iteration, queued in batches that fit the normal queue.
const MESSAGES: usize = 20_000;
const BATCH: usize = 1000;

fn pair() -> (Connection, Connection) {
    let now = Instant::ZERO;
    let mut client: Connection = Connection::connecting(now, Config::default());
    let mut server: Connection = Connection::accepted(now, Config::default());
    client.handle_connected(now);
    server.handle_connected(now);
    while server.poll_event().is_some() {}
    while client.poll_event().is_some() {}
    (client, server)
}

/// Moves everything the client has into the server; returns messages and body bytes seen.
fn deliver(client: &mut Connection, server: &mut Connection) -> (usize, usize) {
    let now = Instant::ZERO;
    let (mut messages, mut bytes) = (0, 0);
    while let Some(data) = client.poll_transmit() {
        let n = data.len();
        let mut input = data;
        while !input.is_empty() {
            let taken = server.handle_input(now, input);
            input = &input[taken..];
            while let Some(event) = server.poll_event() {
                if let Event::Message(m) = event {
                    messages += 1;
                    bytes += m.body.len();
                }
            }
        }
        client.consume_transmit(n);
    }
    (messages, bytes)
}

/// 100-byte bodies, one frame each.
#[divan::bench]
fn small_messages(bencher: Bencher<'_, '_>) {
    one_way(bencher, 100);
}

/// 1 MiB bodies, sent as 8000-byte chunk sequences and reassembled by the server.
#[divan::bench]
fn large_messages(bencher: Bencher<'_, '_>) {
    one_way(bencher, 1 << 20);
}

fn one_way(bencher: Bencher<'_, '_>, size: usize) {
    let (mut client, mut server) = pair();
    let body: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let header = Header::new(3, 2);
    let (count, batch) = if size > 8000 {
        (64, 16)
    } else {
        (MESSAGES, BATCH)
    };
    bencher
        .counter(ItemsCount::new(count))
        .counter(BytesCount::new(count * size))
        .bench_local(|| {
            let now = Instant::ZERO;
            let mut seen = 0;
            for _ in 0..count / batch {
                for _ in 0..batch {
                    client
                        .send(
                            now,
                            Message::new(&header, black_box(&body)),
                            Priority::Normal,
                        )
                        .unwrap();
                }
                seen += deliver(&mut client, &mut server).0;
            }
            assert_eq!(seen, count);
        });
}
