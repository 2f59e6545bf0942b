//! The installed package as C++ and JUCE developers use it: `scripts/install-c-library` into a prefix,
//! pkg-config and `find_package(Presently)`, then examples/cpp and examples/juce built with CMake and run against
//! an in-process server; the C++ example also runs under valgrind and AddressSanitizer.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use presently_sdk::{Availability, Status};

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

/// Installs the package into a fresh prefix under a work directory; returns (work, prefix).
fn install(name: &str) -> (PathBuf, PathBuf) {
    let work = std::env::temp_dir().join(format!("presently-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let prefix = work.join("prefix");
    run(
        Command::new(repo().join("scripts/install-c-library"))
            .args(["--profile", profile(), "--prefix"])
            .arg(&prefix)
            .env("CARGO", env!("CARGO")),
        "install-c-library",
    );
    (work, prefix)
}

/// Configures and builds `examples/<example>` against the installed package into `work/<name>`, with extra
/// CMake arguments; returns the build directory.
fn build_example(example: &str, work: &Path, prefix: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let build = work.join(name);
    run(
        Command::new("cmake")
            .arg("-S")
            .arg(repo().join("examples").join(example))
            .arg("-B")
            .arg(&build)
            .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display()))
            .args(extra),
        "cmake configure",
    );
    run(
        Command::new("cmake")
            .args(["--build"])
            .arg(&build)
            .args(["-j", "2"]),
        "cmake build",
    );
    build
}

/// Runs `binary URL TOKEN bob carol 10` with Bob online and busy ("Tracking") and Carol never connected.
fn run_against_server(binary: &Path) -> String {
    run_command_against_server(Command::new(binary))
}

/// Runs `command URL TOKEN bob carol 10` (the example, maybe under valgrind) like [`run_against_server`].
fn run_command_against_server(mut command: Command) -> String {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = common::start_server(&runtime);
    let token = |user: &str| common::token(&server, user);
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
        command.args([
            server.ws_url(),
            token("alice"),
            "bob".into(),
            "carol".into(),
            "10".into(),
        ]),
        "the example",
    );
    print!("{output}");
    runtime.block_on(async {
        bob.close().await;
        server.shutdown().await;
    });
    output
}

#[test]
fn the_installed_package_builds_and_runs_the_cpp_example() {
    let (work, prefix) = install("cpp");
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
    let check = |output: &str| {
        assert!(
            output.contains("presence bob busy Tracking") || output.contains("presence bob online"),
            "{output}"
        );
        assert!(output.contains("presence carol offline"), "{output}");
        assert!(output.contains("saw 2 of 2 watched users"), "{output}");
    };
    let build = build_example("cpp", &work, &prefix, "build", &[]);
    let binary = build.join("presently-cpp-example");
    check(&run_against_server(&binary));

    // The same C++ program under valgrind, and built with AddressSanitizer: no errors, no leaks.
    let mut valgrind = Command::new("valgrind");
    valgrind
        .args([
            "--quiet",
            "--leak-check=full",
            "--show-leak-kinds=definite,indirect",
            "--errors-for-leak-kinds=definite,indirect",
            "--error-exitcode=23",
        ])
        .arg(&binary);
    check(&run_command_against_server(valgrind));
    let asan = build_example(
        "cpp",
        &work,
        &prefix,
        "build-asan",
        &[
            "-DCMAKE_CXX_FLAGS=-fsanitize=address -fno-omit-frame-pointer -g",
            "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=address",
        ],
    );
    let mut sanitized = Command::new(asan.join("presently-cpp-example"));
    sanitized.env(
        "ASAN_OPTIONS",
        "detect_leaks=1:abort_on_error=0:exitcode=23",
    );
    check(&run_command_against_server(sanitized));
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn the_juce_example_drains_events_on_the_message_thread() {
    let (work, prefix) = install("juce");
    let build = build_example("juce", &work, &prefix, "build", &[]);
    let output =
        run_against_server(&build.join("PresentlyJuceExample_artefacts/PresentlyJuceExample"));
    assert!(output.contains("own status busy"), "{output}");
    assert!(output.contains("state connected"), "{output}");
    assert!(
        output.contains("presence bob busy Tracking") || output.contains("presence bob online"),
        "{output}"
    );
    assert!(output.contains("presence carol offline"), "{output}");
    assert!(output.contains("saw both watched users"), "{output}");
    let _ = std::fs::remove_dir_all(&work);
}
