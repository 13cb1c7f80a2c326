//! Connection settings.

use super::Misbehaviour;
use core::num::{NonZeroU32, NonZeroUsize};
use core::time::Duration;

/// How sequences (bodies over one frame) reach the application.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SequenceDelivery {
    /// Joined into one [`Event::Message`](super::Event::Message), up to
    /// [`Config::max_sequence_size`] and the reassembly storage.
    Reassemble,
    /// As [`Event::SequenceStart`](super::Event::SequenceStart), one
    /// [`Event::SequenceChunk`](super::Event::SequenceChunk) per frame and
    /// [`Event::SequenceEnd`](super::Event::SequenceEnd): any size in little memory.
    Chunks,
}

/// Misbehaviour points per kind (spec §13.6). The C++ gives none; these make repeat
/// offenders reach the ban threshold after a handful of connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Points {
    /// [`Misbehaviour::BadFrame`].
    pub bad_frame: u32,
    /// [`Misbehaviour::NotFlowee`].
    pub not_flowee: u32,
    /// [`Misbehaviour::BadSequence`].
    pub bad_sequence: u32,
    /// [`Misbehaviour::OversizedSequence`].
    pub oversized_sequence: u32,
    /// [`Misbehaviour::PingFlood`], per ping that goes unanswered.
    pub ping_flood: u32,
    /// [`Misbehaviour::Silent`].
    pub silent: u32,
    /// [`Misbehaviour::PingedClient`].
    pub pinged_client: u32,
}

impl Default for Points {
    fn default() -> Self {
        Points {
            bad_frame: 100,
            not_flowee: 100,
            bad_sequence: 100,
            oversized_sequence: 500,
            ping_flood: 10,
            silent: 50,
            pinged_client: 0,
        }
    }
}

impl Points {
    /// Points for `kind` (application punishments carry their own).
    pub fn of(&self, kind: Misbehaviour) -> u32 {
        match kind {
            Misbehaviour::BadFrame => self.bad_frame,
            Misbehaviour::NotFlowee => self.not_flowee,
            Misbehaviour::BadSequence => self.bad_sequence,
            Misbehaviour::OversizedSequence => self.oversized_sequence,
            Misbehaviour::PingFlood => self.ping_flood,
            Misbehaviour::Silent => self.silent,
            Misbehaviour::PingedClient => self.pinged_client,
            Misbehaviour::Application => 0,
        }
    }
}

/// Settings of a [`Connection`](super::Connection). The defaults are the C++ values, plus the
/// decisions of spec §13 where the C++ has none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Connecting side: time between pings (C++: 90 s).
    pub ping_interval: Duration,
    /// Connecting side: close when a ping gets no pong this long (`None`: never, like the C++).
    pub pong_timeout: Option<Duration>,
    /// Accepting side: close when no ping came this long after accepting (C++: 150 s).
    pub first_ping_timeout: Duration,
    /// Accepting side: close when no ping came this long after the last one (C++: 120 s).
    pub ping_timeout: Duration,
    /// Accepting side: close when no message came this long after accepting (off by default;
    /// 4 s is the Hub's window, without its bug).
    pub introduction_timeout: Option<Duration>,
    /// Accepting side: pongs that may wait unwritten. Every ping is answered, however fast
    /// they come (spec §5: no rate limit); a ping that finds this many pongs waiting (the peer
    /// sends pings and does not read the answers) goes unanswered and counts as a
    /// [`Misbehaviour::PingFlood`]. (C++: the normal queue's 2000, unscored.)
    pub max_owed_pongs: NonZeroU32,
    /// Messages the high-priority queue holds (C++: 20).
    pub high_queue_len: NonZeroUsize,
    /// Messages the normal queue holds (C++: 2000).
    pub normal_queue_len: NonZeroUsize,
    /// Heap storage: bytes of encoded frames the normal queue may hold.
    pub normal_queue_bytes: NonZeroUsize,
    /// Heap storage: bytes of encoded frames the high-priority queue may hold.
    pub high_queue_bytes: NonZeroUsize,
    /// Heap storage: bytes of received frames held until the application takes them
    /// (at least one maximum frame: values below 9000 count as 9000). The buffer starts at
    /// 512 bytes and grows only with the input (a read that fills the lent room doubles it), so
    /// only a connection receiving in bulk gets near the default of 1 MiB, where it reads in
    /// fewer, larger system calls.
    pub receive_buffer: NonZeroUsize,
    /// Largest sequence accepted (SequenceStart above it is a protocol error).
    pub max_sequence_size: NonZeroU32,
    /// How sequences are delivered.
    pub sequence_delivery: SequenceDelivery,
    /// Bodies above this are sent as sequences (1..=8000; the C++ uses 8000).
    pub chunk_size: NonZeroUsize,
    /// Misbehaviour points per kind.
    pub points: Points,
    /// Close with [`CloseReason::Banned`](super::CloseReason::Banned) when the score reaches this.
    pub ban_threshold: NonZeroU32,
    /// Points the score loses per hour (C++: 100).
    pub score_decay_per_hour: u32,
    /// Heap storage: buffers left empty this long give their memory back.
    pub release_idle_buffers_after: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ping_interval: Duration::from_secs(90),
            pong_timeout: Some(Duration::from_secs(60)),
            first_ping_timeout: Duration::from_secs(150),
            ping_timeout: Duration::from_secs(120),
            introduction_timeout: None,
            max_owed_pongs: nz32(65_536),
            high_queue_len: nz(20),
            normal_queue_len: nz(2000),
            normal_queue_bytes: nz(64 << 20),
            high_queue_bytes: nz(256 << 10),
            receive_buffer: nz(1 << 20),
            max_sequence_size: nz32(32 << 20),
            sequence_delivery: SequenceDelivery::Reassemble,
            chunk_size: nz(crate::frame::CHUNK_SIZE),
            points: Points::default(),
            ban_threshold: nz32(1000),
            score_decay_per_hour: 100,
            release_idle_buffers_after: Duration::from_secs(2),
        }
    }
}

const fn nz(n: usize) -> NonZeroUsize {
    match NonZeroUsize::new(n) {
        Some(n) => n,
        None => NonZeroUsize::MIN,
    }
}

const fn nz32(n: u32) -> NonZeroU32 {
    match NonZeroU32::new(n) {
        Some(n) => n,
        None => NonZeroU32::MIN,
    }
}
