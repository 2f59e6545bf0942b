//! Generates the C header from the library's source with cbindgen, into OUT_DIR. A test compares it with the
//! committed `include/presently.h` (`PRESENTLY_UPDATE_HEADER=1 cargo test -p presently-ffi` rewrites it).

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let config = cbindgen::Config::from_file(format!("{dir}/cbindgen.toml"))
        .expect("ffi/cbindgen.toml is valid");
    match cbindgen::Builder::new()
        .with_crate(&dir)
        .with_config(config)
        .generate()
    {
        Ok(bindings) => {
            bindings.write_to_file(format!("{out}/presently.h"));
        }
        Err(e) => panic!("cannot generate the C header: {e}"),
    }
}
