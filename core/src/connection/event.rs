//! What a connection reports: events, close reasons, misbehaviour.

use super::Message;
use crate::frame::FrameError;
use crate::header::Header;
use crate::sequence::SequenceError;
use core::fmt;
use core::time::Duration;

/// Something the application should know. Borrowed data stays valid until the next
/// [`Connection::poll_event`](super::Connection::poll_event).
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Event<'a> {
    /// The connecting side's TCP connection is up (after
    /// [`Connection::handle_connected`](super::Connection::handle_connected)).
    Connected,
    /// A message (for sequences: the whole body, when reassembling).
    Message(Message<'a>),
    /// A sequence starts (only with [`SequenceDelivery::Chunks`](super::SequenceDelivery::Chunks)).
    SequenceStart {
        /// Header of the whole message.
        header: Header,
        /// The body size the peer announced (the C++ accepts fewer bytes; never more).
        total: u32,
    },
    /// The next piece of the open sequence's body.
    SequenceChunk(&'a [u8]),
    /// The open sequence is complete.
    SequenceEnd {
        /// Body bytes received in all.
        received: u64,
    },
    /// A pong answered our ping (connecting side).
    Pong {
        /// Time from queueing the ping to receiving the pong.
        rtt: Duration,
    },
    /// The peer broke a rule, or the application punished it.
    Misbehaved {
        /// What it did.
        kind: Misbehaviour,
        /// Points added for it.
        points: u32,
        /// The connection's score afterwards.
        score: u32,
    },
    /// The connection is closed; nothing follows. Sent exactly once.
    Closed {
        /// Why.
        reason: CloseReason,
    },
}

impl Event<'_> {
    /// The event without borrowed data; `None` for [`Event::Message`] and
    /// [`Event::SequenceChunk`].
    pub fn to_static(&self) -> Option<Event<'static>> {
        Some(match *self {
            Event::Connected => Event::Connected,
            Event::SequenceStart { header, total } => Event::SequenceStart { header, total },
            Event::SequenceEnd { received } => Event::SequenceEnd { received },
            Event::Pong { rtt } => Event::Pong { rtt },
            Event::Misbehaved {
                kind,
                points,
                score,
            } => Event::Misbehaved {
                kind,
                points,
                score,
            },
            Event::Closed { reason } => Event::Closed { reason },
            Event::Message(_) | Event::SequenceChunk(_) => return None,
        })
    }
}

/// A protocol rule the peer broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A bad frame or header.
    Frame(FrameError),
    /// A broken sequence.
    Sequence(SequenceError),
}

impl ProtocolError {
    /// A short, stable, snake_case name.
    pub fn name(&self) -> &'static str {
        match self {
            ProtocolError::Frame(e) => e.name(),
            ProtocolError::Sequence(e) => e.name(),
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::Frame(e) => e.fmt(f),
            ProtocolError::Sequence(e) => e.fmt(f),
        }
    }
}

impl From<FrameError> for ProtocolError {
    fn from(e: FrameError) -> Self {
        ProtocolError::Frame(e)
    }
}

impl From<SequenceError> for ProtocolError {
    fn from(e: SequenceError) -> Self {
        ProtocolError::Sequence(e)
    }
}

/// Why a connection closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The application called [`Connection::close`](super::Connection::close).
    Local,
    /// The peer closed the stream, or it broke.
    Eof,
    /// The peer broke the protocol.
    Protocol(ProtocolError),
    /// Accepting side: no ping came in time (150 s after accept, 120 s after the last ping).
    PingTimeout,
    /// Connecting side: our ping got no pong in time.
    PongTimeout,
    /// Connecting side: the peer sent us a ping, which only a client may do.
    PeerPinged,
    /// Accepting side: no message in the introduction window.
    IntroductionTimeout,
    /// The misbehaviour score reached the ban threshold, or the address was banned.
    Banned,
    /// Accepting side: the first message was not the expected login (spec §6.2).
    LoginFailed,
}

impl CloseReason {
    /// Whether the connecting side should connect again (spec §8.4): yes after a drop, a
    /// timeout or most protocol errors; no after a local close, a ping from the server, a peer
    /// that does not speak the protocol, or a ban.
    pub fn should_reconnect(&self) -> bool {
        match self {
            CloseReason::Eof | CloseReason::PongTimeout => true,
            CloseReason::Protocol(ProtocolError::Frame(FrameError::NotFlowee { .. })) => false,
            CloseReason::Protocol(_) => true,
            _ => false,
        }
    }

    /// A short, stable, snake_case name.
    pub fn name(&self) -> &'static str {
        match self {
            CloseReason::Local => "local",
            CloseReason::Eof => "eof",
            CloseReason::Protocol(e) => e.name(),
            CloseReason::PingTimeout => "ping_timeout",
            CloseReason::PongTimeout => "pong_timeout",
            CloseReason::PeerPinged => "peer_pinged",
            CloseReason::IntroductionTimeout => "introduction_timeout",
            CloseReason::Banned => "banned",
            CloseReason::LoginFailed => "login_failed",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Local => f.write_str("closed locally"),
            CloseReason::Eof => f.write_str("closed by the peer"),
            CloseReason::Protocol(e) => write!(f, "protocol error: {e}"),
            CloseReason::PingTimeout => f.write_str("no ping from the peer in time"),
            CloseReason::PongTimeout => f.write_str("no pong from the peer in time"),
            CloseReason::PeerPinged => f.write_str("the peer pinged the connecting side"),
            CloseReason::IntroductionTimeout => {
                f.write_str("no message from the peer in the introduction window")
            }
            CloseReason::Banned => f.write_str("banned for misbehaviour"),
            CloseReason::LoginFailed => f.write_str("the first message was not a valid login"),
        }
    }
}

/// Kinds of misbehaviour, each with its own points in [`Points`](super::Points).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Misbehaviour {
    /// A frame with a bad length or a malformed header.
    BadFrame,
    /// The stream did not start like this protocol (a port scanner, HTTP, …).
    NotFlowee,
    /// A broken sequence: a second start, a continuation without start or for another message,
    /// a negative size, more data than announced.
    BadSequence,
    /// A sequence announcing more than the configured limit (a memory bomb).
    OversizedSequence,
    /// A ping while [`Config::max_owed_pongs`](super::Config::max_owed_pongs) pongs waited:
    /// the peer pings without reading the answers.
    PingFlood,
    /// Accepting side: the peer stayed silent past a deadline (no ping, no introduction).
    Silent,
    /// Connecting side: the peer sent a ping.
    PingedClient,
    /// Points from the application ([`Connection::punish`](super::Connection::punish)).
    Application,
}

impl Misbehaviour {
    /// The kind for a protocol error.
    pub fn of(error: &ProtocolError) -> Misbehaviour {
        match error {
            ProtocolError::Frame(FrameError::NotFlowee { .. }) => Misbehaviour::NotFlowee,
            ProtocolError::Frame(_) => Misbehaviour::BadFrame,
            ProtocolError::Sequence(SequenceError::TooLarge { .. }) => {
                Misbehaviour::OversizedSequence
            }
            ProtocolError::Sequence(_) => Misbehaviour::BadSequence,
        }
    }

    /// A short, stable, snake_case name.
    pub fn name(&self) -> &'static str {
        match self {
            Misbehaviour::BadFrame => "bad_frame",
            Misbehaviour::NotFlowee => "not_flowee",
            Misbehaviour::BadSequence => "bad_sequence",
            Misbehaviour::OversizedSequence => "oversized_sequence",
            Misbehaviour::PingFlood => "ping_flood",
            Misbehaviour::Silent => "silent",
            Misbehaviour::PingedClient => "pinged_client",
            Misbehaviour::Application => "application",
        }
    }
}

/// Counters of one connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames received (all kinds).
    pub frames_in: u64,
    /// Bytes taken by `handle_input`.
    pub bytes_in: u64,
    /// Frames fully transmitted.
    pub frames_out: u64,
    /// Bytes transmitted.
    pub bytes_out: u64,
    /// Messages delivered to the application.
    pub messages_in: u64,
    /// Messages fully transmitted.
    pub messages_out: u64,
    /// Messages waiting in the high-priority queue.
    pub queued_high: usize,
    /// Messages waiting in the normal queue.
    pub queued_normal: usize,
    /// Bytes waiting in both queues.
    pub queued_bytes: usize,
    /// The last round trip measured by a ping.
    pub last_rtt: Option<Duration>,
    /// The misbehaviour score.
    pub score: u32,
}
