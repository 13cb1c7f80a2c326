//! Set-up shared by the smol adapter's integration tests.

use flowee_smol::{NodeConfig, Request, Responder, Server};

/// A server on a free port that answers service 3 with `handler`.
pub(crate) async fn server_for_3(handler: fn(&Request<'_>, &mut Responder<'_>)) -> Server {
    let server = Server::bind("127.0.0.1:0", NodeConfig::default())
        .await
        .unwrap();
    server.handle(3, None, handler).unwrap();
    server
}
