//! A `no_std`, no-alloc client for Flowee's message protocol, over any socket with the
//! [`embedded-io-async`](embedded_io_async) traits: an `embassy-net` `TcpSocket` on a
//! microcontroller, or a host socket through `embedded-io-adapters`.
//!
//! The protocol lives in [`flowee_proto`]; this crate only moves bytes between a socket and a
//! [`Connection`](flowee_proto::Connection), and wakes it when the [`Clock`] says a deadline
//! has come. A [`Client`] owns the connection, the socket and the clock, all of fixed size
//! (about 20 KB with the default [`Fixed`] storage), so it fits in a static task of any
//! executor. The socket reads straight into the connection's receive buffer.
//!
//! # The loop
//!
//! [`Client::send`] only queues. [`Client::next`] runs until an event is ready and returns it:
//! each turn it handles due timers (comparing the clock with the deadline, never trusting the
//! timer), returns an event if there is one, and otherwise either writes what the connection
//! has (many frames per write, partial writes kept) or reads at most `READ` bytes into the
//! connection's receive buffer,
//! racing either against the next deadline. Every few turns it yields to the executor, so a
//! socket that is always ready cannot starve other tasks.
//!
//! # Example
//!
//! On the host, against the `flowee-smol` server (the socket is smol's, seen through
//! `embedded-io-adapters`): a request with a request id (header tag 11), and its reply.
//!
//! ```
//! use embedded_io_adapters::futures_03::FromFutures;
//! use flowee_embedded::{Client, Clock, Config, Event, Header, Instant, Message, Priority};
//! use flowee_smol::{NodeConfig, Request, Responder, Server, reply_header};
//! use std::time::Duration;
//!
//! /// The host's monotonic clock, in milliseconds since the client started.
//! struct HostClock(std::time::Instant);
//!
//! impl Clock for HostClock {
//!     fn now(&self) -> Instant {
//!         Instant::from_millis(self.0.elapsed().as_millis() as u64)
//!     }
//!     async fn sleep_until(&self, at: Instant) {
//!         smol::Timer::at(self.0 + Duration::from_millis(at.as_millis())).await;
//!     }
//! }
//!
//! smol::block_on(async {
//!     // A server answering service 3 with "ok", keeping the request id.
//!     let server = Server::bind("127.0.0.1:0", NodeConfig::default()).await?;
//!     server.handle(3, None, |req: &Request<'_>, out: &mut Responder<'_>| {
//!         let reply = reply_header(req.message.header);
//!         let _ = out.reply(Message::new(&reply, b"\x0a\x02ok"));
//!     })?;
//!
//!     let stream = smol::Async::<std::net::TcpStream>::connect(server.local_addr()).await?;
//!     stream.get_ref().set_nodelay(true)?;
//!     let clock = HostClock(std::time::Instant::now());
//!     let mut client: Client<_, _> = Client::new(FromFutures::new(stream), clock, Config::default());
//!
//!     let request = Header::new(3, 2).with_int(11, 1)?;
//!     // An error gives the message back; `map(drop)` keeps the reason only.
//!     client.send(Message::new(&request, b""), Priority::Normal).map_err(|e| e.map(drop))?;
//!     let deadline = client.clock().now() + Duration::from_secs(10);
//!     loop {
//!         match client.next_before(deadline).await? {
//!             Some(Event::Message(reply)) if reply.header.request_id() == Some(1) => {
//!                 assert_eq!(reply.header.message_id, Some(3));
//!                 assert_eq!(reply.body, b"\x0a\x02ok");
//!                 break;
//!             }
//!             Some(_) => {} // Event::Connected comes first
//!             None => panic!("no reply in 10 s"),
//!         }
//!     }
//!     server.shutdown().await;
//!     Ok::<_, Box<dyn std::error::Error>>(())
//! })
//! .unwrap();
//! ```
//!
//! On a microcontroller the clock comes from the executor's time driver, e.g. with
//! `embassy-time`, and the socket from the network stack (this crate depends on neither):
//!
//! ```ignore
//! struct EmbassyClock;
//!
//! impl flowee_embedded::Clock for EmbassyClock {
//!     fn now(&self) -> flowee_embedded::Instant {
//!         flowee_embedded::Instant::from_millis(embassy_time::Instant::now().as_millis())
//!     }
//!     async fn sleep_until(&self, at: flowee_embedded::Instant) {
//!         embassy_time::Timer::at(embassy_time::Instant::from_millis(at.as_millis())).await
//!     }
//! }
//!
//! let mut socket = embassy_net::tcp::TcpSocket::new(stack, &mut rx_buffer, &mut tx_buffer);
//! socket.connect(hub_endpoint).await?;
//! let mut client: Client<_, _> = Client::new(socket, EmbassyClock, Config::default());
//! ```
//!
//! # Reconnecting
//!
//! When the connection closes ([`Event::Closed`]; [`CloseReason::should_reconnect`] says
//! whether trying again makes sense), [`Client::send`] goes on queueing. Open a new socket and
//! hand it to [`Client::reconnect`] (or reconnect the same one through [`Client::io_mut`] and
//! call [`Client::restart`]): the messages the old connection had not sent go out first.
//! Turn Nagle's algorithm off on the socket where the stack allows it (`TCP_NODELAY`): the
//! client already batches frames into few writes.
#![no_std]
#![forbid(unsafe_code)]

mod client;
mod clock;
mod error;
mod select;

pub use client::Client;
pub use clock::Clock;
pub use error::Error;
pub use flowee_proto;
pub use flowee_proto::storage::Fixed;
pub use flowee_proto::{CloseReason, Config, Event, Header, Instant, Message, Priority, SendError};
