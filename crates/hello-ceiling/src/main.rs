//! hello-ceiling: the smallest useful axum server, answering every request with a fixed body.
//! Benchmarks measure it beside learning-chat, in the same run, to show the machine's HTTP
//! ceiling: what a do-nothing handler achieves with the same runtime, framework and load generator.

use axum::routing::any;
use axum::Router;
use std::net::SocketAddr;
use std::process::ExitCode;

/// The fixed answer; about the size of a small JSON reply so the bytes on the wire are comparable.
const BODY: &str = "Hello, World!";

fn main() -> ExitCode {
    // The only argument is the address; default loopback so nothing is exposed by accident.
    let bind = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8200".to_owned());
    let bind: SocketAddr = match bind.parse() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("usage: hello-ceiling [ADDR]  (bad address {bind:?}: {e})");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: std::io::Result<()> = runtime.block_on(async move {
        // Any method, any path: wrk's POST to /api/v1/agents/math gets the same tiny answer.
        let app = Router::new()
            .route("/", any(|| async { BODY }))
            .route("/{*path}", any(|| async { BODY }));
        let listener = tokio::net::TcpListener::bind(bind).await?;
        // Bench scripts read the bound address from this line (port 0 picks a free port).
        println!("hello-ceiling listening on {}", listener.local_addr()?);
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
