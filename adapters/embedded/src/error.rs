//! What can go wrong on the client's side of the socket.

use core::fmt;

/// Why [`Client::next`](crate::Client::next) or [`Client::flush`](crate::Client::flush)
/// failed. Problems with the peer's behaviour are never errors: they arrive as
/// [`Event::Misbehaved`](flowee_proto::Event::Misbehaved) and
/// [`Event::Closed`](flowee_proto::Event::Closed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error<E> {
    /// Reading the socket failed. The connection counts as closed by the peer: what it
    /// already received is still delivered, then
    /// [`CloseReason::Eof`](flowee_proto::CloseReason::Eof).
    Read(E),
    /// Writing the socket failed; the connection is closed as for [`Error::Read`].
    Write(E),
    /// There is no live connection: its [`Event::Closed`](flowee_proto::Event::Closed) was
    /// already returned. Messages sent now wait for
    /// [`Client::reconnect`](crate::Client::reconnect).
    Closed,
}

impl<E: fmt::Debug> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Read(e) => write!(f, "socket read failed: {e:?}"),
            Error::Write(e) => write!(f, "socket write failed: {e:?}"),
            Error::Closed => f.write_str("the connection is closed"),
        }
    }
}

impl<E: fmt::Debug> core::error::Error for Error<E> {}
