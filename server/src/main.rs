//! `presently-server`: the reference presence server.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use presently_server::{ServerConfig, TokenAuthority, WS_PATH, start};

/// The Presently reference server: presence protocol v1 over WebSocket and HTTP + Server-Sent Events (see
/// docs/protocol.md).
#[derive(Parser, Debug)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve presence (the default when no command is given).
    Serve(ServeArgs),
    /// Print a token for a user, signed with the secret (for development and tests).
    Token(TokenArgs),
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "PRESENTLY_LISTEN", default_value = "127.0.0.1:7420")]
    listen: SocketAddr,
    /// HS256 secret that signs client tokens (at least 16 bytes).
    #[arg(long, env = "PRESENTLY_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// How often clients must send a frame, in milliseconds.
    #[arg(long, default_value_t = 15_000)]
    heartbeat_interval_ms: u64,
    /// How long a silent session lives, in milliseconds (at least twice the heartbeat interval).
    #[arg(long, default_value_t = 45_000)]
    session_ttl_ms: u64,
    /// How long a dropped session is kept for a resume, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    resume_grace_ms: u64,
    /// Bearer token of the admin API (contacts, channels); without it the admin API is off.
    #[arg(long, env = "PRESENTLY_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Do not serve the WebSocket endpoint (only the HTTP binding: for testing fallbacks).
    #[arg(long, conflicts_with = "no_sse")]
    no_websocket: bool,
    /// Do not serve the HTTP binding (POST + Server-Sent Events).
    #[arg(long)]
    no_sse: bool,
    /// Threads that serve connections, each with its own event loop and listening socket on the address (the
    /// kernel spreads new connections over them); 0 serves them on one multi-threaded runtime instead.
    /// Default: half the CPUs, at least one (0 where sharing a port between sockets is not available).
    #[arg(long, env = "PRESENTLY_IO_THREADS")]
    io_threads: Option<usize>,
    /// Share presence with other nodes through this Redis (e.g. redis://127.0.0.1:6379); without it presence
    /// lives in this process only.
    #[arg(long, env = "PRESENTLY_REDIS", hide_env_values = true)]
    redis: Option<String>,
    /// With --redis: how long a node counts as alive after its last heartbeat to Redis, in milliseconds.
    #[arg(long, default_value_t = 10_000, requires = "redis")]
    redis_node_ttl_ms: u64,
    /// With --redis: the prefix of every Redis key and channel.
    #[arg(long, default_value = "presently", requires = "redis")]
    redis_key_prefix: String,
}

#[derive(Args, Debug)]
struct TokenArgs {
    /// The user id the token names.
    #[arg(long)]
    user: String,
    /// How long the token is valid, in seconds.
    #[arg(long, default_value_t = 86_400)]
    ttl_secs: u64,
    /// HS256 secret (the server's).
    #[arg(long, env = "PRESENTLY_SECRET", hide_env_values = true)]
    secret: String,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "presently_server=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Token(args)) => return token(args),
        Some(Command::Serve(args)) => args,
        None => cli.serve,
    };
    let io_threads = args.io_threads.unwrap_or_else(default_io_threads);
    // With I/O threads, this runtime waits for Ctrl-C and carries the work of a cluster (Redis, and the changes
    // of other nodes fanned out to this node's watchers): with one thread it saturated at 8,000 changes a second.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(serve(args, io_threads)),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn token(args: TokenArgs) -> ExitCode {
    let result = TokenAuthority::new(args.secret.as_bytes())
        .map_err(|e| e.to_string())
        .and_then(|auth| {
            auth.mint(&args.user, Duration::from_secs(args.ttl_secs))
                .map_err(|e| e.to_string())
        });
    match result {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Half the CPUs, at least one: each I/O thread wakes on its own for its connections' timers and frames, and
/// where waking a thread is dear (virtual machines) fewer threads gave a lower p99 with thousands of connections
/// (BENCHMARKS.md); the other CPUs are left to the kernel's network work and the main runtime. 0 (one
/// multi-threaded runtime) where sharing a port between sockets is not available.
fn default_io_threads() -> usize {
    if cfg!(unix) {
        std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
    } else {
        0
    }
}

async fn serve(args: ServeArgs, io_threads: usize) -> ExitCode {
    let Some(secret) = args.secret else {
        eprintln!(
            "error: a token secret is required: pass --secret or set PRESENTLY_SECRET (at least 16 bytes)"
        );
        return ExitCode::FAILURE;
    };
    let mut config = ServerConfig::new(args.listen, secret.into_bytes()).with_heartbeat(
        Duration::from_millis(args.heartbeat_interval_ms),
        Duration::from_millis(args.session_ttl_ms),
    );
    config.resume_grace = Duration::from_millis(args.resume_grace_ms);
    config.admin_token = args.admin_token;
    config.websocket = !args.no_websocket;
    config.sse = !args.no_sse;
    config.io_threads = io_threads;
    config.redis = args.redis.map(|url| {
        let mut redis = presently_server::RedisConfig::new(url);
        redis.node_ttl = Duration::from_millis(args.redis_node_ttl_ms);
        redis.key_prefix = args.redis_key_prefix;
        redis
    });
    let server = match start(config).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "presently-server {} listening on ws://{}{WS_PATH} (Ctrl-C to drain and stop)",
        env!("CARGO_PKG_VERSION"),
        server.local_addr()
    );
    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("error: cannot wait for Ctrl-C: {e}");
    }
    eprintln!("draining: sending goaway to every session");
    server.shutdown().await;
    ExitCode::SUCCESS
}
