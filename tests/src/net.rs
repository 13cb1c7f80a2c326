//! The simulated network: hosts, TCP-like socket pairs, links with faults, a virtual clock.

use crate::rng::Rng;
use flowee_proto::Instant;
use std::any::Any;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// A host in the simulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostId(pub usize);

/// One end of a simulated TCP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Socket(pub usize);

/// What a host asks of the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open a TCP connection to `to`; the answer comes to
    /// [`Host::connected`] or [`Host::connect_failed`] with the same `tag`.
    Connect {
        /// The address to connect to (a host's [`Sim::addr`]).
        to: SocketAddr,
        /// Chosen by the host to match the answer.
        tag: u64,
    },
    /// Close our end of a socket (the peer sees EOF once the data in flight has arrived).
    Close(Socket),
}

/// Something that lives on the simulated network: a node, one connection, a scripted peer.
///
/// The simulator calls the input methods as things happen, then [`Host::run`] to let the
/// application react, then drains [`Host::poll_action`] and [`Host::transmit`].
pub trait Host: Any {
    /// A connection from `from` came in on `socket`; false refuses it (the peer sees it close
    /// at once).
    fn accept(&mut self, now: Instant, socket: Socket, from: SocketAddr) -> bool;
    /// Our connect with this `tag` succeeded.
    fn connected(&mut self, now: Instant, tag: u64, socket: Socket);
    /// Our connect with this `tag` failed (nothing listens there).
    fn connect_failed(&mut self, now: Instant, tag: u64);
    /// Bytes arrived; returns how many were taken (the rest is offered again later).
    fn input(&mut self, now: Instant, socket: Socket, data: &[u8]) -> usize;
    /// The peer closed the socket, or it was reset.
    fn eof(&mut self, now: Instant, socket: Socket);
    /// Bytes to send on `socket`.
    fn transmit(&mut self, socket: Socket) -> Option<&[u8]>;
    /// `n` bytes of the last [`Host::transmit`] were sent.
    fn consume(&mut self, socket: Socket, n: usize);
    /// When [`Host::timeout`] should run next.
    fn poll_timeout(&self) -> Option<Instant>;
    /// The clock reached the deadline.
    fn timeout(&mut self, now: Instant);
    /// Lets the application react (drain events, send replies); records what it saw under
    /// the host's `name`.
    fn run(&mut self, now: Instant, trace: &mut Trace, name: &str);
    /// Requests to the network.
    fn poll_action(&mut self) -> Option<Action>;
    /// For downcasting in tests.
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// For downcasting in tests.
    fn as_any(&self) -> &dyn Any;
}

/// How a link carries bytes. Every value is drawn from the simulation's seeded RNG.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkModel {
    /// Base one-way delay.
    pub latency: Duration,
    /// Extra random delay, 0..=jitter, per chunk (order is kept, as in TCP).
    pub jitter: Duration,
    /// Each write is cut into chunks of 1..=`max_chunk` bytes, delivered separately.
    pub max_chunk: usize,
    /// Chance per chunk that the link stalls for `stall` before delivering it.
    pub stall_chance: f64,
    /// How long a stall lasts.
    pub stall: Duration,
    /// Bytes a direction holds in flight plus unread at the receiver before writes are cut
    /// short (the socket buffer).
    pub buffer: usize,
    /// Chance per chunk that the connection is reset instead.
    pub reset_chance: f64,
}

impl Default for LinkModel {
    fn default() -> Self {
        LinkModel {
            latency: Duration::from_millis(5),
            jitter: Duration::from_millis(2),
            max_chunk: 1500,
            stall_chance: 0.0,
            stall: Duration::from_millis(200),
            buffer: 256 * 1024,
            reset_chance: 0.0,
        }
    }
}

/// A running hash of everything that happened, to check that a seed replays exactly.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    hash: u64,
    records: u64,
    lines: Option<Vec<String>>,
}

impl Trace {
    /// Adds a record.
    pub fn record(&mut self, now: Instant, host: &str, what: fmt::Arguments<'_>) {
        let line = format!("{now:?} {host} {what}");
        // FNV-1a.
        let mut h = if self.records == 0 {
            0xCBF2_9CE4_8422_2325
        } else {
            self.hash
        };
        for b in line.as_bytes().iter().chain(b"\n") {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x100_0000_01B3);
        }
        self.hash = h;
        self.records += 1;
        if let Some(lines) = &mut self.lines {
            lines.push(line);
        }
    }

    /// The hash of all records so far.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// How many records.
    pub fn len(&self) -> u64 {
        self.records
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// The records as text, if [`Sim::keep_trace_lines`] was set.
    pub fn lines(&self) -> &[String] {
        self.lines.as_deref().unwrap_or(&[])
    }
}

/// Why a run stopped early.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SimError {
    /// Too many steps without the clock moving, or hosts that never stop reacting within one
    /// step: something keeps asking to run now.
    Livelock {
        /// When.
        at: Instant,
    },
    /// The step budget ran out.
    StepLimit {
        /// When.
        at: Instant,
    },
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimError::Livelock { at } => write!(f, "livelock at {at:?}"),
            SimError::StepLimit { at } => write!(f, "step limit reached at {at:?}"),
        }
    }
}

impl std::error::Error for SimError {}

struct SocketState {
    host: HostId,
    peer: Socket,
    /// Our host still uses this end.
    open: bool,
    /// Bytes that arrived but the host has not taken yet.
    unread: VecDeque<u8>,
    /// Bytes sent by this end that have not arrived yet.
    in_flight: usize,
    /// When the last chunk sent by this end arrives (chunks keep their order).
    last_arrival: Instant,
    /// EOF arrived while bytes were still unread; it is delivered after them.
    eof_pending: bool,
    /// Bumped by a reset, so deliveries already scheduled are dropped.
    generation: u64,
}

enum Pending {
    Deliver {
        to: Socket,
        generation: u64,
        data: Vec<u8>,
    },
    Eof {
        to: Socket,
        generation: u64,
    },
    Connect {
        from: HostId,
        to: SocketAddr,
        tag: u64,
    },
    Call(Box<dyn FnOnce(&mut Sim)>),
}

struct Scheduled {
    at: Instant,
    seq: u64,
    what: Pending,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct HostEntry {
    name: String,
    host: Box<dyn Host>,
    addr: SocketAddr,
    listening: bool,
}

/// The port hosts listen on (the Hub's API port).
pub const PORT: u16 = 1235;

/// A deterministic network of [`Host`]s on a virtual clock.
pub struct Sim {
    now: Instant,
    rng: Rng,
    link: LinkModel,
    hosts: Vec<HostEntry>,
    sockets: Vec<SocketState>,
    /// Sockets with an open end, the only ones `settle` visits.
    active: std::collections::BTreeSet<usize>,
    queue: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    trace: Trace,
    steps: u64,
    /// Steps allowed per [`Sim::run_until`].
    pub max_steps: u64,
    /// Steps allowed without the clock moving.
    pub max_steps_at_one_time: u64,
    /// Rounds one settling (hosts reacting to a step) may take before the run stops with
    /// [`SimError::Livelock`]: a host that is busy in every round never lets the step end.
    pub max_settle_rounds: u32,
    /// Actions one host may ask for in one settling round before the run stops with
    /// [`SimError::Livelock`] (a host whose [`Host::poll_action`] never runs dry).
    pub max_actions_per_round: u32,
}

impl Sim {
    /// An empty network with the clock at zero.
    pub fn new(seed: u64, link: LinkModel) -> Self {
        Sim {
            now: Instant::ZERO,
            rng: Rng::new(seed),
            link,
            hosts: Vec::new(),
            sockets: Vec::new(),
            active: std::collections::BTreeSet::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            trace: Trace::default(),
            steps: 0,
            max_steps: 20_000_000,
            max_steps_at_one_time: 200_000,
            max_settle_rounds: 1000,
            max_actions_per_round: 100_000,
        }
    }

    /// Keeps every trace record as text (for debugging a failing seed).
    pub fn keep_trace_lines(&mut self) {
        self.trace.lines.get_or_insert_with(Vec::new);
    }

    /// The virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The seeded RNG, for tests that draw their own random choices.
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// The link model used from now on.
    pub fn set_link(&mut self, link: LinkModel) {
        self.link = link;
    }

    /// What happened so far.
    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    /// Adds a host that accepts connections, at its own address 10.x.y.z:1235.
    pub fn add_host(&mut self, name: &str, host: impl Host) -> HostId {
        let n = self.hosts.len() as u32 + 1;
        let ip = IpAddr::V4(Ipv4Addr::new(10, (n >> 16) as u8, (n >> 8) as u8, n as u8));
        self.add_host_at(name, ip, host)
    }

    /// Adds a host at a chosen IP address (several hosts may share one, like users behind one
    /// router).
    pub fn add_host_at(&mut self, name: &str, ip: IpAddr, host: impl Host) -> HostId {
        self.hosts.push(HostEntry {
            name: name.to_owned(),
            host: Box::new(host),
            addr: SocketAddr::new(ip, PORT),
            listening: true,
        });
        HostId(self.hosts.len() - 1)
    }

    /// The address a host listens on.
    pub fn addr(&self, host: HostId) -> SocketAddr {
        self.hosts[host.0].addr
    }

    /// Whether connections to `host` are accepted (false: connects fail, as with nothing
    /// listening on the port).
    pub fn set_listening(&mut self, host: HostId, listening: bool) {
        self.hosts[host.0].listening = listening;
    }

    /// The host, as its concrete type.
    pub fn host<H: Host>(&self, id: HostId) -> &H {
        self.hosts[id.0]
            .host
            .as_any()
            .downcast_ref()
            .expect("host type")
    }

    /// The host, as its concrete type.
    pub fn host_mut<H: Host>(&mut self, id: HostId) -> &mut H {
        self.hosts[id.0]
            .host
            .as_any_mut()
            .downcast_mut()
            .expect("host type")
    }

    fn schedule(&mut self, at: Instant, what: Pending) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            what,
        }));
    }

    /// Runs `f` at `at` (for scripted scenarios: sends, faults, restarts).
    pub fn at(&mut self, at: Instant, f: impl FnOnce(&mut Sim) + 'static) {
        self.schedule(at, Pending::Call(Box::new(f)));
    }

    /// `from` opens a connection to `to`, answered after one link latency; `tag` comes back in
    /// [`Host::connected`] / [`Host::connect_failed`].
    pub fn connect(&mut self, from: HostId, to: HostId, tag: u64) {
        let to = self.addr(to);
        self.connect_addr(from, to, tag);
    }

    fn connect_addr(&mut self, from: HostId, to: SocketAddr, tag: u64) {
        let at = self.now + self.link.latency;
        self.schedule(at, Pending::Connect { from, to, tag });
    }

    /// Resets a connection: data in flight is lost and both ends see EOF now.
    pub fn reset(&mut self, socket: Socket) {
        let peer = self.sockets[socket.0].peer;
        for s in [socket, peer] {
            let st = &mut self.sockets[s.0];
            st.generation += 1;
            st.in_flight = 0;
            st.unread.clear();
            st.eof_pending = false;
            if st.open {
                let generation = st.generation;
                self.schedule(self.now, Pending::Eof { to: s, generation });
            }
        }
    }

    /// The peer of `socket` closes its end: `socket` sees EOF after the data in flight.
    pub fn eof(&mut self, socket: Socket) {
        let peer = self.sockets[socket.0].peer;
        self.close_end(peer);
    }

    /// Every socket of `host` is reset (a crash).
    pub fn crash(&mut self, host: HostId) {
        let mine: Vec<Socket> = (0..self.sockets.len())
            .map(Socket)
            .filter(|s| self.sockets[s.0].host == host && self.sockets[s.0].open)
            .collect();
        for s in mine {
            self.reset(s);
            self.sockets[s.0].open = false;
        }
    }

    /// Sockets of `host` still open.
    pub fn sockets_of(&self, host: HostId) -> Vec<Socket> {
        (0..self.sockets.len())
            .map(Socket)
            .filter(|s| self.sockets[s.0].host == host && self.sockets[s.0].open)
            .collect()
    }

    fn close_end(&mut self, socket: Socket) {
        let st = &mut self.sockets[socket.0];
        if !st.open {
            return;
        }
        st.open = false;
        let peer = st.peer;
        let arrive = st.last_arrival.max(self.now) + self.link.latency;
        let generation = self.sockets[peer.0].generation;
        self.schedule(
            arrive,
            Pending::Eof {
                to: peer,
                generation,
            },
        );
    }

    /// Runs until the clock would pass `end` or nothing is left to do; the clock ends at `end`.
    pub fn run_until(&mut self, end: Instant) -> Result<(), SimError> {
        let mut same_time = 0;
        let budget = self.steps + self.max_steps;
        // Hosts may have work queued before anything happened (a node's first connect).
        self.settle()?;
        loop {
            let before = self.now;
            if !self.step(end)? {
                self.now = self.now.max(end);
                return Ok(());
            }
            same_time = if self.now == before { same_time + 1 } else { 0 };
            if same_time > self.max_steps_at_one_time {
                return Err(SimError::Livelock { at: self.now });
            }
            if self.steps > budget {
                return Err(SimError::StepLimit { at: self.now });
            }
        }
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) -> Result<(), SimError> {
        self.run_until(self.now + d)
    }

    /// Advances to the earliest scheduled delivery or deadline, if it is not after `end`, and
    /// handles it. Returns false when there is none.
    pub fn step(&mut self, end: Instant) -> Result<bool, SimError> {
        self.steps += 1;
        let next_event = self.queue.peek().map(|Reverse(s)| s.at);
        let next_timer = self
            .hosts
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.host.poll_timeout().map(|t| (t, i)))
            .min();
        let next = match (next_event, next_timer) {
            (Some(e), Some((t, _))) => e.min(t),
            (Some(e), None) => e,
            (None, Some((t, _))) => t,
            (None, None) => return Ok(false),
        };
        if next > end {
            return Ok(false);
        }
        self.now = self.now.max(next);
        let now = self.now;
        if next_event.is_some_and(|e| e <= now) {
            let Some(Reverse(item)) = self.queue.pop() else {
                return Ok(true);
            };
            self.handle(item.what);
        } else if let Some((_, i)) = next_timer {
            self.hosts[i].host.timeout(now);
        }
        self.settle()?;
        Ok(true)
    }

    fn handle(&mut self, what: Pending) {
        let now = self.now;
        match what {
            Pending::Deliver {
                to,
                generation,
                data,
            } => {
                let peer = self.sockets[to.0].peer;
                let st = &mut self.sockets[to.0];
                if st.generation != generation || !st.open {
                    return;
                }
                st.unread.extend(&data);
                self.sockets[peer.0].in_flight -= data.len().min(self.sockets[peer.0].in_flight);
            }
            Pending::Eof { to, generation } => {
                let st = &mut self.sockets[to.0];
                if st.generation != generation || !st.open {
                    return;
                }
                if st.unread.is_empty() {
                    let host = st.host;
                    self.hosts[host.0].host.eof(now, to);
                } else {
                    // Delivered once the host has read everything before it.
                    st.eof_pending = true;
                }
            }
            Pending::Connect { from, to, tag } => {
                let Some(to) = self
                    .hosts
                    .iter()
                    .position(|h| h.addr == to && h.listening)
                    .map(HostId)
                else {
                    self.hosts[from.0].host.connect_failed(now, tag);
                    return;
                };
                let a = Socket(self.sockets.len());
                let b = Socket(a.0 + 1);
                self.active.insert(a.0);
                self.active.insert(b.0);
                for (host, peer) in [(from, b), (to, a)] {
                    self.sockets.push(SocketState {
                        host,
                        peer,
                        open: true,
                        unread: VecDeque::new(),
                        in_flight: 0,
                        last_arrival: now,
                        eof_pending: false,
                        generation: 0,
                    });
                }
                // The connecting side gets an ephemeral port, as from a real stack.
                let from_addr =
                    SocketAddr::new(self.hosts[from.0].addr.ip(), 40_000 + (a.0 % 20_000) as u16);
                self.hosts[from.0].host.connected(now, tag, a);
                if !self.hosts[to.0].host.accept(now, b, from_addr) {
                    self.close_end(b);
                }
            }
            Pending::Call(f) => f(self),
        }
    }

    /// Lets every host react until nothing moves: run applications, apply actions, hand
    /// unread bytes to hosts, and put what they transmit on the links. Still moving after
    /// [`Sim::max_settle_rounds`] rounds is a [`SimError::Livelock`].
    fn settle(&mut self) -> Result<(), SimError> {
        for _ in 0..self.max_settle_rounds {
            let mut moved = false;
            for h in 0..self.hosts.len() {
                let name = self.hosts[h].name.clone();
                self.hosts[h].host.run(self.now, &mut self.trace, &name);
                let mut actions = 0;
                while let Some(action) = self.hosts[h].host.poll_action() {
                    moved = true;
                    actions += 1;
                    if actions > self.max_actions_per_round {
                        return Err(SimError::Livelock { at: self.now });
                    }
                    match action {
                        Action::Connect { to, tag } => self.connect_addr(HostId(h), to, tag),
                        Action::Close(s) => {
                            self.trace
                                .record(self.now, &name, format_args!("close {s:?}"));
                            self.close_end(s);
                        }
                    }
                }
            }
            let active: Vec<usize> = self.active.iter().copied().collect();
            for s in active {
                moved |= self.read(Socket(s));
                moved |= self.write(Socket(s));
                let st = &self.sockets[s];
                if !st.open && !self.sockets[st.peer.0].open {
                    self.active.remove(&s);
                }
            }
            if !moved {
                return Ok(());
            }
        }
        Err(SimError::Livelock { at: self.now })
    }

    /// Offers unread bytes to the socket's host.
    fn read(&mut self, socket: Socket) -> bool {
        let st = &mut self.sockets[socket.0];
        if !st.open || st.unread.is_empty() {
            return false;
        }
        let host = st.host;
        let (data, _) = st.unread.as_slices();
        let data = data.to_vec();
        let n = self.hosts[host.0].host.input(self.now, socket, &data);
        if n > 0 {
            let name = &self.hosts[host.0].name;
            self.trace.record(
                self.now,
                name,
                format_args!(
                    "read {socket:?} {n} #{:016x}",
                    crate::hosts::fnv(&data[..n])
                ),
            );
        }
        let st = &mut self.sockets[socket.0];
        st.unread.drain(..n.min(data.len()));
        if st.unread.is_empty() && st.eof_pending {
            st.eof_pending = false;
            self.hosts[host.0].host.eof(self.now, socket);
        }
        n > 0
    }

    /// Moves what the socket's host transmits onto the link, as much as the buffer allows.
    fn write(&mut self, socket: Socket) -> bool {
        let st = &self.sockets[socket.0];
        if !st.open {
            return false;
        }
        let peer = st.peer;
        if !self.sockets[peer.0].open {
            // Writing to a closed peer: the bytes vanish (the peer will reset or has gone).
            let host = st.host;
            if let Some(data) = self.hosts[host.0].host.transmit(socket) {
                let n = data.len();
                self.hosts[host.0].host.consume(socket, n);
                return n > 0;
            }
            return false;
        }
        let room = self
            .link
            .buffer
            .saturating_sub(st.in_flight + self.sockets[peer.0].unread.len());
        if room == 0 {
            return false;
        }
        let host = st.host;
        let Some(data) = self.hosts[host.0].host.transmit(socket) else {
            return false;
        };
        let n = data.len().min(room);
        if n == 0 {
            return false;
        }
        let bytes = data[..n].to_vec();
        self.hosts[host.0].host.consume(socket, n);
        self.send_chunks(socket, peer, bytes);
        true
    }

    fn send_chunks(&mut self, from: Socket, to: Socket, bytes: Vec<u8>) {
        let link = self.link;
        let generation = self.sockets[to.0].generation;
        let mut offset = 0;
        while offset < bytes.len() {
            let len = self.rng.range(1, link.max_chunk.max(1) as u64) as usize;
            let end = (offset + len).min(bytes.len());
            if self.rng.chance(link.reset_chance) {
                self.reset(from);
                return;
            }
            let jitter = self.rng.range(0, link.jitter.as_millis() as u64);
            let mut arrive = self.now + link.latency + Duration::from_millis(jitter);
            if self.rng.chance(link.stall_chance) {
                arrive = arrive + link.stall;
            }
            let st = &mut self.sockets[from.0];
            arrive = arrive.max(st.last_arrival);
            st.last_arrival = arrive;
            st.in_flight += end - offset;
            let data = bytes[offset..end].to_vec();
            self.schedule(
                arrive,
                Pending::Deliver {
                    to,
                    generation,
                    data,
                },
            );
            offset = end;
        }
    }

    /// The name a host was added with.
    pub fn name(&self, host: HostId) -> &str {
        &self.hosts[host.0].name
    }
}
