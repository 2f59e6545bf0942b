//! The C library from C: the committed header is current, and a C program runs under AddressSanitizer against
//! an in-process reference server with no errors and no leaks.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The directory holding `libpresently.a` for this build (target/<profile>).
fn library_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

#[test]
fn the_committed_header_is_current() {
    let generated = std::fs::read_to_string(concat!(env!("OUT_DIR"), "/presently.h"))
        .expect("generated header");
    let committed_path = manifest_dir().join("include/presently.h");
    if std::env::var_os("PRESENTLY_UPDATE_HEADER").is_some() {
        std::fs::write(&committed_path, &generated).expect("write the header");
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    assert!(
        committed == generated,
        "ffi/include/presently.h is stale: run PRESENTLY_UPDATE_HEADER=1 cargo test -p presently-ffi --test c_api"
    );
}

/// Builds `libpresently.a` for this profile (cargo does not build a library without an rlib for its tests), so
/// that the C programs never link a stale one.
fn build_library() -> PathBuf {
    let dir = library_dir();
    let mut build = Command::new(env!("CARGO"));
    build.args(["build", "--quiet", "-p", "presently-ffi", "--lib"]);
    if dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let status = build.status().expect("run cargo");
    assert!(status.success(), "building libpresently failed");
    let library = dir.join("libpresently.a");
    assert!(library.exists(), "{} was not built", library.display());
    library
}

/// Compiles `source` against the static library with the given extra flags; returns the binary.
fn compile(source: &str, name: &str, flags: &[&str]) -> PathBuf {
    let out = library_dir().join(name);
    let library = build_library();
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(flags)
        .arg("-std=c11")
        .arg("-Wall")
        .arg("-Werror")
        .arg("-I")
        .arg(manifest_dir().join("include"))
        .arg(manifest_dir().join(source))
        .arg(&library)
        .args(["-lpthread", "-ldl", "-lm", "-lgcc_s", "-lc"])
        .arg("-o")
        .arg(&out)
        .status()
        .expect("a C compiler (cc)");
    assert!(status.success(), "compiling {source} failed");
    out
}

/// Runs `command` (the smoke program, maybe under valgrind) with `args`; returns its stdout after checking that
/// it succeeded and that no sanitizer spoke.
fn run_smoke(mut command: Command, args: &[String]) -> String {
    let output = command
        .args(args)
        .env(
            "ASAN_OPTIONS",
            "detect_leaks=1:abort_on_error=0:exitcode=23",
        )
        .output()
        .expect("run the C program (valgrind comes from the Debian package valgrind)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    print!("{stdout}");
    assert!(
        output.status.success(),
        "the C program failed ({:?}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("ok"), "{stdout}");
    assert!(
        !stderr.contains("ERROR: AddressSanitizer") && !stderr.contains("LeakSanitizer"),
        "{stderr}"
    );
    stdout
}

/// The whole smoke scenario, then the create/free cycles, each in a fresh process made by `command`.
fn smoke(command: impl Fn() -> Command) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = common::start_server(&runtime);
    let token = |user: &str| common::token(&server, user);
    let stdout = run_smoke(
        command(),
        &[
            server.ws_url(),
            token("alice"),
            token("bob"),
            token("frank"),
        ],
    );
    assert!(
        stdout.contains("sees bob: busy \"Mixing\" (in_studio: Ableton Live 12)"),
        "{stdout}"
    );
    // Alice, Carol, Dave and Erin (one configuration) shared a connection; Bob and Frank had their own.
    assert_eq!(server.stats().sessions_started, 3, "{:?}", server.stats());
    let stdout = run_smoke(
        command(),
        &["--cycles".into(), server.ws_url(), token("carol")],
    );
    assert!(
        stdout.contains("1020 create/connect/free cycles"),
        "{stdout}"
    );
    runtime.block_on(server.shutdown());
}

#[test]
fn a_c_program_runs_clean_under_address_sanitizer() {
    let binary = compile(
        "tests/c/smoke.c",
        "presently-smoke-asan",
        &["-fsanitize=address", "-fno-omit-frame-pointer", "-g"],
    );
    smoke(|| Command::new(&binary));
}

#[test]
fn a_c_program_runs_clean_under_valgrind() {
    let binary = compile("tests/c/smoke.c", "presently-smoke-plain", &["-g", "-O1"]);
    smoke(|| {
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
        valgrind
    });
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn record_activity_allocates_nothing_from_c() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = common::start_server(&runtime);
    let binary = compile("tests/c/alloc_count.c", "presently-alloc-count", &["-O1"]);
    let output = Command::new(&binary)
        .args([server.ws_url(), common::token(&server, "alice")])
        .output()
        .expect("run the C program");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("allocations during 1000000 record_activity calls: 0"),
        "{stdout}"
    );
    print!("{stdout}");
    runtime.block_on(server.shutdown());
}
