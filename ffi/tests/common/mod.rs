//! Shared by the ffi tests: an in-process reference server on its own runtime.
#![allow(dead_code)]

use std::time::Duration;

use presently_server::RunningServer;

pub const SECRET: &[u8] = b"ffi test secret, at least 16 bytes";

/// A reference server on loopback, running on `runtime`.
pub fn start_server(runtime: &tokio::runtime::Runtime) -> RunningServer {
    runtime
        .block_on(presently_server::start(
            presently_server::ServerConfig::new(
                "127.0.0.1:0".parse().expect("a loopback address"),
                SECRET.to_vec(),
            ),
        ))
        .expect("the server starts")
}

/// A token for `user`, valid for ten minutes.
pub fn token(server: &RunningServer, user: &str) -> String {
    server
        .mint_token(user, Duration::from_secs(600))
        .expect("a token")
}
