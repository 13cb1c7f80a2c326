//! [smol](https://docs.rs/smol) adapter for [`flowee_proto`]: an async [`Client`] and
//! [`Server`] for Flowee's message protocol.
//!
//! The protocol lives in `flowee-proto`; this crate only owns sockets, the clock and tasks. One
//! [`flowee_proto::Node`] sits behind a mutex that is never held across an `.await`; each socket
//! has a task that writes many frames per system call and reads straight into the node's
//! receive buffer, and one timer task wakes the node at its deadlines (checking the clock, not
//! trusting the timer). A send from anywhere else ([`Client::send`] on another thread, a
//! request) is written at once by the sender while little waits (up to 64 KiB), so it costs no
//! wake-up of the socket's task; bulk and what a full socket did not take are left to the task.
//! TCP_NODELAY is on.
//!
//! ```
//! use flowee_smol::{Client, Header, Message, NodeConfig, Server};
//! use std::time::Duration;
//!
//! smol::block_on(async {
//!     // A server that answers service 3, like the Hub's "Util" service.
//!     let server = Server::bind("127.0.0.1:0", NodeConfig::default()).await?;
//!     server.handle(3, None, |req: &flowee_smol::Request<'_>, out: &mut flowee_smol::Responder<'_>| {
//!         let reply = flowee_smol::reply_header(req.message.header);
//!         let _ = out.reply(Message::new(&reply, b"\x0a\x02ok"));
//!     })?;
//!
//!     let client = Client::connect(server.local_addr(), NodeConfig::default()).await?;
//!     let reply = client
//!         .request(Message::new(&Header::new(3, 2), b""), Duration::from_secs(5))
//!         .await?;
//!     assert_eq!(reply.header.message_id, Some(3));
//!     server.shutdown().await;
//!     Ok::<_, Box<dyn std::error::Error>>(())
//! })
//! .unwrap();
//! ```

mod client;
mod runtime;
mod server;

pub use client::{Client, RequestFailure, Subscription};
pub use flowee_proto::node::{ConnId, NodeConfig, Refused, RequestError};
pub use flowee_proto::{
    CloseReason, Config, Header, Message, Misbehaviour, OwnedMessage, Priority, SendError,
};
pub use flowee_service::{NodeEvent, Request, Responder, Service, describe_close, reply_header};
pub use server::Server;

use smol::channel::Receiver;
use smol::stream::Stream;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

/// Sends on one connection later, from any task (see [`Server::replier`]).
#[derive(Clone)]
pub struct Replier {
    rt: Arc<runtime::Runtime>,
    id: ConnId,
}

impl Replier {
    /// Queues a message on the connection; errors give it back.
    pub fn send<'m>(
        &self,
        message: Message<'m>,
        priority: Priority,
    ) -> Result<(), SendError<Message<'m>>> {
        let now = self.rt.now();
        let result = self.rt.lock().node.send(now, self.id, message, priority);
        self.rt.pump();
        result
    }

    /// The connection.
    pub fn connection(&self) -> ConnId {
        self.id
    }
}

/// A stream of [`NodeEvent`]s. Events that find the stream full (4096 unread) are counted in
/// [`Events::lost`] rather than kept.
pub struct Events {
    rx: Pin<Box<Receiver<NodeEvent>>>,
    lost: Arc<AtomicU64>,
}

impl Events {
    /// Events dropped because the stream was not read.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// The next event.
    pub async fn next(&mut self) -> Option<NodeEvent> {
        self.rx.recv().await.ok()
    }
}

impl Stream for Events {
    type Item = NodeEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<NodeEvent>> {
        self.rx.as_mut().poll_next(cx)
    }
}
