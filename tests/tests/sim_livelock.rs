//! A run with a host that never stops is an error, not a hung test and not a silent `Ok`.

use flowee_proto::Instant;
use flowee_sim::{Action, Host, LinkModel, RawHost, Sim, SimError, Socket, Trace};
use std::any::Any;
use std::net::SocketAddr;
use std::time::Duration;

/// A host with endless bytes to send on its one socket, and optionally always due or always
/// asking for an action.
#[derive(Default)]
struct Busy {
    socket: Option<Socket>,
    data: Vec<u8>,
    always_due: bool,
    endless_actions: Option<SocketAddr>,
    timeouts: u64,
}

impl Host for Busy {
    fn accept(&mut self, _now: Instant, _socket: Socket, _from: SocketAddr) -> bool {
        false
    }

    fn connected(&mut self, _now: Instant, _tag: u64, socket: Socket) {
        self.socket = Some(socket);
    }

    fn connect_failed(&mut self, _now: Instant, _tag: u64) {}

    fn input(&mut self, _now: Instant, _socket: Socket, data: &[u8]) -> usize {
        data.len()
    }

    fn eof(&mut self, _now: Instant, _socket: Socket) {}

    fn transmit(&mut self, socket: Socket) -> Option<&[u8]> {
        (self.socket == Some(socket) && !self.data.is_empty()).then_some(&self.data[..])
    }

    /// Never runs dry: whatever was sent, there is as much again.
    fn consume(&mut self, _socket: Socket, _n: usize) {}

    fn poll_timeout(&self) -> Option<Instant> {
        self.always_due.then_some(Instant::ZERO)
    }

    fn timeout(&mut self, _now: Instant) {
        self.timeouts += 1;
    }

    fn run(&mut self, _now: Instant, _trace: &mut Trace, _name: &str) {}

    fn poll_action(&mut self) -> Option<Action> {
        // Connects to nowhere, forever.
        self.endless_actions
            .map(|to| Action::Connect { to, tag: 1 })
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A link with a fixed delay and a small socket buffer.
fn link() -> LinkModel {
    LinkModel {
        latency: Duration::from_millis(5),
        jitter: Duration::ZERO,
        buffer: 1000,
        ..LinkModel::default()
    }
}

#[test]
fn a_host_writing_forever_into_a_closed_socket_is_a_livelock() {
    let mut sim = Sim::new(1, link());
    let peer = sim.add_host("peer", RawHost::new());
    let busy = sim.add_host(
        "busy",
        Busy {
            data: vec![0xAA; 100],
            ..Busy::default()
        },
    );
    sim.connect(busy, peer, 0);
    // Until the peer closes, the link buffer holds the writer back; afterwards every round of
    // settling throws bytes away and asks for another.
    sim.run_until(Instant::from_millis(50)).unwrap();
    assert!(sim.host::<RawHost>(peer).received.len() > 1000);
    sim.at(Instant::from_millis(100), move |sim| {
        sim.host_mut::<RawHost>(peer).close()
    });
    assert_eq!(
        sim.run_until(Instant::from_secs(10)),
        Err(SimError::Livelock {
            at: Instant::from_millis(100)
        })
    );
}

#[test]
fn a_host_that_is_always_due_is_a_livelock() {
    let mut sim = Sim::new(2, link());
    sim.max_steps_at_one_time = 10_000;
    let busy = sim.add_host(
        "busy",
        Busy {
            always_due: true,
            ..Busy::default()
        },
    );
    let result = sim.run_until(Instant::from_secs(10));
    assert_eq!(result, Err(SimError::Livelock { at: Instant::ZERO }));
    assert!(sim.host::<Busy>(busy).timeouts > 10_000);
    assert_eq!(sim.now(), Instant::ZERO, "the clock never moved");
}

#[test]
fn a_host_whose_actions_never_run_dry_is_a_livelock() {
    let mut sim = Sim::new(3, link());
    sim.max_actions_per_round = 1000;
    let nowhere: SocketAddr = "192.0.2.1:1235".parse().unwrap();
    sim.add_host(
        "busy",
        Busy {
            endless_actions: Some(nowhere),
            ..Busy::default()
        },
    );
    assert_eq!(
        sim.run_until(Instant::from_secs(10)),
        Err(SimError::Livelock { at: Instant::ZERO })
    );
}

#[test]
fn a_quiet_network_still_ends_ok() {
    let mut sim = Sim::new(4, link());
    let peer = sim.add_host("peer", RawHost::new());
    let busy = sim.add_host(
        "busy",
        Busy {
            data: vec![0xAA; 100],
            ..Busy::default()
        },
    );
    sim.connect(busy, peer, 0);
    // The peer reads everything but the link buffer is bounded: the writer is held back by
    // delivery times, the clock moves, and the run reaches its end.
    assert_eq!(sim.run_until(Instant::from_millis(200)), Ok(()));
    assert!(sim.host::<RawHost>(peer).received.len() > 1000);
}
