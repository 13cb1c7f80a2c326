//! The adapter's threads end with it: after `close` and `shutdown` (and after dropping, which
//! does the same) the process has as many threads as before. A test binary of its own, so
//! no other test starts threads meanwhile.

use flowee_std::{Client, Header, Message, NodeConfig, Request, Responder, Server, reply_header};
use std::time::{Duration, Instant};

/// Threads of this process (Linux: the entries of /proc/self/task).
#[cfg(target_os = "linux")]
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[cfg(target_os = "linux")]
#[test]
fn close_and_shutdown_join_every_thread() {
    let before = threads();
    for round in 0..3 {
        let server = Server::bind("127.0.0.1:0", NodeConfig::default()).unwrap();
        server
            .handle(3, None, |req: &Request<'_>, out: &mut Responder<'_>| {
                let _ = out.reply(Message::new(
                    &reply_header(req.message.header),
                    req.message.body,
                ));
            })
            .unwrap();
        let clients: Vec<Client> = (0..3)
            .map(|_| Client::connect(server.local_addr(), NodeConfig::default()).unwrap())
            .collect();
        for c in &clients {
            c.request(
                Message::new(&Header::new(3, 0), b"x"),
                Duration::from_secs(10),
            )
            .unwrap();
        }
        // Timer, acceptor, and a reader and a writer per socket on both sides.
        assert!(threads() >= before + 1 + 1 + 3 * 2 + 3 * (1 + 2));
        if round == 0 {
            for c in &clients {
                c.close();
            }
            server.shutdown();
        } else {
            // Dropping does the same; in either order.
            if round == 1 {
                drop(clients);
                drop(server);
            } else {
                drop(server);
                drop(clients);
            }
        }
        // A joined thread may linger in /proc for a moment while the kernel finishes it.
        let end = Instant::now() + Duration::from_secs(10);
        while threads() != before {
            assert!(
                Instant::now() < end,
                "round {round}: {} threads left over",
                threads() - before
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
