//! A client and a server `Connection` on fixed storage, as a microcontroller would use them.
//! `.ci/run` also runs this file with `--no-default-features`, so the crate is built without
//! its allocator-backed parts: `cargo test -p flowee-proto --no-default-features --test no_alloc`.

use flowee_proto::Instant;
use flowee_proto::connection::{Config, Connection, Event, Message, Priority, SequenceDelivery};
use flowee_proto::header::Header;
use flowee_proto::storage::Fixed;

/// The README's small configuration: one maximum frame each way, sequences in chunks.
type Small = Fixed;
/// A sender whose normal queue holds a 30,000-byte body (four chunks).
type Sender = Fixed<9000, 40_000>;

#[test]
fn the_small_configuration_stays_under_24_kib() {
    let size = core::mem::size_of::<Connection<Small>>();
    println!("Connection<Fixed>: {size} bytes");
    assert!(size < 24 * 1024, "{size}");
}

#[test]
fn messages_and_a_chunked_sequence_without_an_allocator() {
    let now = Instant::ZERO;
    let config = Config {
        sequence_delivery: SequenceDelivery::Chunks,
        ..Config::default()
    };
    let mut client: Connection<Sender> = Connection::connecting(now, config);
    let mut server: Connection<Small> = Connection::accepted(now, config);
    client.handle_connected(now);
    let big: [u8; 30_000] = core::array::from_fn(|i| i as u8);
    client
        .send(
            now,
            Message::new(&Header::new(3, 1), b"small"),
            Priority::Normal,
        )
        .unwrap();
    client
        .send(
            now,
            Message::new(&Header::new(3, 2), &big),
            Priority::Normal,
        )
        .unwrap();

    let (mut small, mut starts, mut received, mut checksum, mut ends) = (0, 0, 0usize, 0u64, 0);
    while let Some(data) = client.poll_transmit() {
        let n = data.len();
        let mut input = data;
        while !input.is_empty() {
            let taken = server.handle_input(now, input);
            input = &input[taken..];
            while let Some(event) = server.poll_event() {
                match event {
                    Event::Message(m) => {
                        assert_eq!((m.header.message_id, m.body), (Some(1), &b"small"[..]));
                        small += 1;
                    }
                    Event::SequenceStart { header, total } => {
                        assert_eq!((header.message_id, total), (Some(2), 30_000));
                        starts += 1;
                    }
                    Event::SequenceChunk(chunk) => {
                        for (i, &b) in chunk.iter().enumerate() {
                            assert_eq!(b, (received + i) as u8);
                        }
                        received += chunk.len();
                        checksum += chunk.iter().map(|&b| u64::from(b)).sum::<u64>();
                    }
                    Event::SequenceEnd { received: total } => {
                        assert_eq!(total, 30_000);
                        ends += 1;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        client.consume_transmit(n);
    }
    assert_eq!((small, starts, received, ends), (1, 1, 30_000, 1));
    assert_eq!(checksum, big.iter().map(|&b| u64::from(b)).sum::<u64>());
}
