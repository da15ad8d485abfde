//! Generates the C header from `src/lib.rs` with cbindgen into `OUT_DIR/tcasm.h`, where
//! `tests/header.rs` compares it with the committed `include/tcasm.h` (and, with
//! `TCASM_BLESS=1`, replaces it). The build itself never writes into the source tree.
use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("tcasm.h");
    println!("cargo::rerun-if-changed=src/lib.rs");
    println!("cargo::rerun-if-changed=cbindgen.toml");
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("capi/cbindgen.toml is valid");
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen generates the header from capi/src/lib.rs")
        .write_to_file(&out);
    println!("cargo::rustc-env=TCASM_GENERATED_HEADER={}", out.display());
}
