//! A deterministic network simulator for [`flowee_proto`]: a virtual clock, a seeded RNG, and
//! hosts joined by links that cut writes into random chunks, add latency and stalls, and can
//! be closed or reset at any moment. The project's own tests use it, and so can yours.
//!
//! [`Sim::step`] jumps the clock to the earliest delivery or deadline, so an hour of protocol
//! time runs in milliseconds; the same seed gives the same run, which
//! [`Trace::hash`] lets a test check. A run is bounded: a livelock (work that never lets the
//! clock move) is a [`SimError`], not a hung test.
//!
//! # Testing an application protocol
//!
//! A tiny "counter" service on top of flowee-proto: service 100, message 0 asks to add the body's
//! `uint` (tag 1) to a running total, message 1 replies with the total. The server application
//! is an [`App`]; the client sends three requests over a link that cuts every write into 1..=3
//! byte pieces.
//!
//! ```
//! use flowee_proto::cmf::{Reader, Writer};
//! use flowee_proto::{Config, Connection, Header, Instant, Message, Priority};
//! use flowee_sim::{App, ConnectionHost, LinkModel, Received, Sim};
//! use std::time::Duration;
//!
//! #[derive(Default)]
//! struct Counter {
//!     total: u64,
//! }
//!
//! impl App for Counter {
//!     fn on_event(&mut self, now: Instant, event: &Received, conn: &mut Connection) {
//!         let Received::Message { header, body } = event else { return };
//!         if (header.service_id, header.message_id) != (100, Some(0)) {
//!             return conn.punish(100); // not our protocol
//!         }
//!         for token in Reader::new(body).flatten() {
//!             if token.tag == 1 {
//!                 self.total += token.value.as_u64().unwrap_or(0);
//!             }
//!         }
//!         let mut reply = Writer::new(Vec::new());
//!         reply.add(1, self.total);
//!         let mut h = Header::new(100, 1);
//!         h.ints = header.ints; // copy the request id, like the Hub does
//!         conn.send(now, Message::new(&h, &reply.finish().unwrap()), Priority::Normal).unwrap();
//!     }
//! }
//!
//! let link = LinkModel { max_chunk: 3, ..LinkModel::default() };
//! let mut sim = Sim::new(42, link);
//! let server = sim.add_host("server", ConnectionHost::server(Config::default(), Counter::default()));
//! let mut client = ConnectionHost::client(sim.now(), Config::default(), ());
//! for (i, n) in [5u64, 7, 30].into_iter().enumerate() {
//!     let mut body = Writer::new(Vec::new());
//!     body.add(1, n);
//!     let header = Header::new(100, 0).with_int(11, i as i32).unwrap();
//!     client.conn().send(Instant::ZERO, Message::new(&header, &body.finish().unwrap()), Priority::Normal).unwrap();
//! }
//! let client = sim.add_host("client", client);
//! sim.connect(client, server, 0);
//! sim.run_for(Duration::from_secs(1)).unwrap();
//!
//! let replies = sim.host::<ConnectionHost>(client).messages();
//! let totals: Vec<u64> = replies
//!     .iter()
//!     .map(|(_, body)| Reader::new(body).next().unwrap().unwrap().value.as_u64().unwrap())
//!     .collect();
//! assert_eq!(totals, [5, 12, 42]);
//! assert_eq!(replies[2].0.request_id(), Some(2));
//! ```

pub mod counting;
mod hosts;
mod net;
mod node_host;
mod rng;

pub use hosts::{App, ConnectionHost, RawHost, Received, fnv};
pub use net::{Action, Host, HostId, LinkModel, PORT, Sim, SimError, Socket, Trace};
pub use node_host::{NodeApp, NodeHost, NodeReceived};
pub use rng::Rng;
