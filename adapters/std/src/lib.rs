//! Blocking std-threads adapter for [`flowee_proto`]: a [`Client`] and a [`Server`] for
//! Flowee's message protocol, with plain threads and blocking sockets.
//!
//! The protocol lives in `flowee-proto`; this crate only owns sockets, the clock and threads.
//! One [`flowee_proto::Node`] sits behind a mutex that is never held across blocking I/O. Each
//! socket has a reader thread (blocking reads into its own 64 KiB buffer, handed to the node
//! with the lock held only for that) and a writer thread. On Linux and Android, whichever
//! thread gives the node something to send (the reader handling a request, a caller of
//! [`Client::send`]) also writes it at once, with a write that
//! cannot block (`MSG_DONTWAIT`), so an answer costs the same two system calls as a bare
//! blocking ping-pong. What the socket does not take, and everything on other platforms,
//! go to the writer thread (woken when the node has bytes, copies up to
//! 256 KiB of frames, writes without the lock, keeps partial writes). One timer
//! thread wakes the node at its deadlines, checking the clock rather than trusting the wait;
//! connects run on threads of their own. TCP_NODELAY is on.
//!
//! Any thread may send: [`Client::send`] and [`Replier::send`] lock the node briefly and
//! queue into its bounded queues, never blocking. Incoming messages go to [`Service`]
//! callbacks ([`Server::handle`]) or to blocking iterators ([`Client::subscribe`],
//! [`Client::events`], [`Server::events`]).
//!
//! ```
//! use flowee_std::{Client, Header, Message, NodeConfig, Request, Responder, Server};
//! use std::time::Duration;
//!
//! // A server that echoes service 3, answering with message id + 1 like the Hub.
//! let server = Server::bind("127.0.0.1:0", NodeConfig::default())?;
//! server.handle(3, None, |req: &Request<'_>, out: &mut Responder<'_>| {
//!     let reply = flowee_std::reply_header(req.message.header);
//!     let _ = out.reply(Message::new(&reply, req.message.body));
//! })?;
//!
//! let client = Client::connect(server.local_addr(), NodeConfig::default())?;
//! let body = b"\x0a\x02hi"; // tag 1, string "hi"
//! let reply = client.request(Message::new(&Header::new(3, 2), body), Duration::from_secs(5))?;
//! assert_eq!(reply.header.message_id, Some(3));
//! assert_eq!(&reply.body[..], body);
//!
//! client.close();
//! server.shutdown();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod client;
mod feed;
mod runtime;
mod server;

pub use client::{Client, RequestFailure};
pub use feed::{Events, Subscription};
pub use flowee_proto::node::{ConnId, NodeConfig, Refused, RequestError};
pub use flowee_proto::{
    CloseReason, Config, Header, Message, Misbehaviour, OwnedMessage, Priority, SendError,
};
pub use flowee_service::{NodeEvent, Request, Responder, Service, describe_close, reply_header};
pub use server::Server;

use std::fmt;
use std::sync::Arc;

/// Sends on one connection later, from any thread (see [`Server::replier`]).
#[derive(Clone)]
pub struct Replier {
    rt: Arc<runtime::Runtime>,
    id: ConnId,
}

impl Replier {
    pub(crate) fn new(rt: Arc<runtime::Runtime>, id: ConnId) -> Self {
        Replier { rt, id }
    }

    /// Queues a message on the connection; never blocks, and errors give it back.
    pub fn send<'m>(
        &self,
        message: Message<'m>,
        priority: Priority,
    ) -> Result<(), SendError<Message<'m>>> {
        self.rt
            .with(|inner, now| inner.node.send(now, self.id, message, priority))
    }

    /// The connection.
    pub fn connection(&self) -> ConnId {
        self.id
    }
}

impl fmt::Debug for Replier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replier")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}
