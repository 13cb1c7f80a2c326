//! A sans-IO engine for Flowee's message protocol (the "Network Manager" protocol of Flowee
//! the Hub, its Indexer and every Flowee API client).
//!
//! No sockets, threads or clocks live here: bytes and clock ticks go in, events and outbound
//! bytes come out. The crate is `no_std` and needs no allocator; the `alloc` feature (on by
//! default) adds growable buffers and `bytes`-backed shared frames.
//!
//! Layers, bottom up:
//! - [`cmf`]: the Compact Message Format token codec.
//! - [`header`] and [`frame`]: headers and length-prefixed frames, byte-exact with the C++.
//! - [`sequence`]: reassembly of bodies larger than one frame.
//! - [`connection`]: one TCP stream as a state machine: keepalive, queues, sequences,
//!   misbehaviour and closes; [`storage`] says where its buffers live.
//! - [`node`]: many connections: admission and bans, routing, requests, broadcast, reconnects.
//!
//! # The run loop
//!
//! Every adapter drives a [`Connection`] the same way: write what it has to send, hand it what
//! arrived, drain its events, and wake it when its deadline comes. The methods are split the way
//! quinn-proto splits them: `handle_*` feed input (always with `now`), commands such as
//! [`Connection::send`] return `Err` only for local misuse, and `poll_*` give output. Call
//! order does not matter; pending output simply waits for the next poll.
//!
//! Here a client and a server run in memory, with a `Vec<u8>` for each direction of the socket:
//!
//! ```
//! use flowee_proto::{Config, Connection, Event, Header, Instant, Message, Priority};
//!
//! let mut now = Instant::ZERO;
//! let mut client: Connection = Connection::connecting(now, Config::default());
//! let mut server: Connection = Connection::accepted(now, Config::default());
//! client.handle_connected(now); // the TCP connect succeeded
//!
//! // Ask the server for its version: service 0, message 0, request id 1.
//! let request = Header::new(0, 0).with_int(11, 1).unwrap();
//! client.send(now, Message::new(&request, &[]), Priority::Normal).unwrap();
//!
//! let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
//! let mut reply = None;
//! for _ in 0..10 {
//!     // 1. Write what each side wants to send (a socket may take only part of it).
//!     for (conn, wire) in [(&mut client, &mut to_server), (&mut server, &mut to_client)] {
//!         while let Some(bytes) = conn.poll_transmit() {
//!             let n = bytes.len();
//!             wire.extend_from_slice(bytes);
//!             conn.consume_transmit(n);
//!         }
//!     }
//!     // 2. Hand over what arrived; a short count means "poll events first".
//!     let n = server.handle_input(now, &to_server);
//!     to_server.drain(..n);
//!     let n = client.handle_input(now, &to_client);
//!     to_client.drain(..n);
//!     // 3. Drain events. They borrow the connection until the next poll.
//!     while let Some(event) = server.poll_event() {
//!         if let Event::Message(m) = event {
//!             // Reply with message id + 1, copying the request id, like the Hub.
//!             let mut header = Header::new(m.header.service_id, 1);
//!             header.ints = m.header.ints;
//!             let body = [0x0A, 0x02, b'o', b'k']; // tag 1, string "ok"
//!             server.send(now, Message::new(&header, &body), Priority::Normal).unwrap();
//!         }
//!     }
//!     while let Some(event) = client.poll_event() {
//!         if let Event::Message(m) = event {
//!             reply = Some((*m.header, m.body.to_vec()));
//!         }
//!     }
//!     // 4. Sleep until the earliest deadline (here: jump there), then handle it.
//!     if let Some(deadline) = [client.poll_timeout(), server.poll_timeout()].into_iter().flatten().min() {
//!         now = deadline;
//!         client.handle_timeout(now);
//!         server.handle_timeout(now);
//!     }
//! }
//! let (header, body) = reply.unwrap();
//! assert_eq!((header.service_id, header.message_id, header.request_id()), (0, Some(1), Some(1)));
//! assert_eq!(body, [0x0A, 0x02, b'o', b'k']);
//! ```
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;
// `arbitrary`'s derives need std; they are for fuzzing and tests on a host.
#[cfg(all(feature = "arbitrary", not(test)))]
extern crate std;

pub mod cmf;
pub mod connection;
pub mod frame;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod header;
pub mod node;
mod score;
pub mod sequence;
pub mod storage;
pub mod time;

#[cfg(feature = "alloc")]
pub use connection::OwnedMessage;
pub use connection::{
    CloseReason, Config, Connection, Event, InputRoom, Message, Misbehaviour, Priority, Role,
    SendError,
};
pub use header::Header;
pub use node::{ConnId, Node, NodeConfig, Output};
pub use time::Instant;
