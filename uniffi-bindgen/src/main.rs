//! `uniffi-bindgen`: generates Kotlin, Swift and Python bindings from the built `libpresently_uniffi`, e.g.
//! `cargo run -p uniffi-bindgen -- generate --library target/debug/libpresently_uniffi.so --language kotlin
//! --out-dir out`.

fn main() {
    uniffi::uniffi_bindgen_main()
}
