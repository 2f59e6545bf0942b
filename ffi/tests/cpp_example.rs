//! The installed package as a C++ developer uses it: `scripts/install-c-library` into a prefix, pkg-config and
//! `find_package(Presently)`, then examples/cpp built with CMake and run against an in-process server.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use presently_sdk::{Availability, Status};

const SECRET: &[u8] = b"cpp example secret, 16+ bytes long";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(command: &mut Command, what: &str) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn profile() -> &'static str {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    if dir.file_name().is_some_and(|n| n == "release") {
        "release"
    } else {
        "debug"
    }
}

#[test]
fn the_installed_package_builds_and_runs_the_cpp_example() {
    let work = std::env::temp_dir().join(format!("presently-cpp-{}", std::process::id()));
    let prefix = work.join("prefix");
    let build = work.join("build");
    let _ = std::fs::remove_dir_all(&work);

    run(
        Command::new(repo().join("scripts/install-c-library"))
            .args(["--profile", profile(), "--prefix"])
            .arg(&prefix)
            .env("CARGO", env!("CARGO")),
        "install-c-library",
    );
    for file in [
        "include/presently.h",
        "lib/libpresently.a",
        "lib/pkgconfig/presently.pc",
        "lib/cmake/Presently/PresentlyConfig.cmake",
    ] {
        assert!(prefix.join(file).exists(), "{file} not installed");
    }
    let flags = run(
        Command::new("pkg-config")
            .args(["--cflags", "--libs", "presently"])
            .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig")),
        "pkg-config",
    );
    assert!(
        flags.contains("-lpresently")
            && flags.contains(&format!("-I{}", prefix.join("include").display())),
        "{flags}"
    );

    run(
        Command::new("cmake")
            .arg("-S")
            .arg(repo().join("examples/cpp"))
            .arg("-B")
            .arg(&build)
            .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display())),
        "cmake configure",
    );
    run(
        Command::new("cmake").arg("--build").arg(&build),
        "cmake build",
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime
        .block_on(presently_server::start(
            presently_server::ServerConfig::new("127.0.0.1:0".parse().unwrap(), SECRET.to_vec()),
        ))
        .unwrap();
    let token = |user: &str| server.mint_token(user, Duration::from_secs(600)).unwrap();
    // Bob is online and busy; Carol never came: both are seen, Carol as offline.
    let bob = runtime.block_on(async {
        let bob = presently_sdk::Client::builder(server.ws_url())
            .token(token("bob"))
            .build()
            .unwrap();
        bob.connect().await.unwrap();
        bob.set_status(Status::new(Availability::Busy).with_message("Tracking"))
            .unwrap();
        bob
    });
    let output = run(
        Command::new(build.join("presently-cpp-example")).args([
            server.ws_url(),
            token("alice"),
            "bob".into(),
            "carol".into(),
            "10".into(),
        ]),
        "the C++ example",
    );
    print!("{output}");
    assert!(
        output.contains("presence bob busy Tracking") || output.contains("presence bob online"),
        "{output}"
    );
    assert!(output.contains("presence carol offline"), "{output}");
    assert!(output.contains("saw 2 of 2 watched users"), "{output}");
    runtime.block_on(async {
        bob.close().await;
        server.shutdown().await;
    });
    let _ = std::fs::remove_dir_all(&work);
}
