//! `include/tcasm.h` (committed, what C and Fortran programs compile against) is exactly
//! what cbindgen makes of `src/lib.rs` (done by `build.rs`). `TCASM_BLESS=1` rewrites it,
//! for a developer; with `CI` set (as `.ci/run` and CI services do) that is a failure.
use std::path::Path;

#[test]
fn header_is_current() {
    let generated = std::fs::read_to_string(env!("TCASM_GENERATED_HEADER")).expect("build.rs wrote the header");
    let committed_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../include/tcasm.h");
    let bless = std::env::var("TCASM_BLESS").as_deref() == Ok("1");
    // CI checks the committed header; rewriting it there would pass whatever it holds.
    assert!(!(bless && std::env::var_os("CI").is_some()), "TCASM_BLESS=1 under CI: CI never rewrites include/tcasm.h");
    if bless {
        std::fs::write(&committed_path, &generated).unwrap();
        eprintln!("wrote {}", committed_path.display());
        return;
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(committed.lines().count().min(generated.lines().count()));
        panic!(
            "include/tcasm.h is out of date with capi/src/lib.rs (first difference at line {}).\n\
             Regenerate it with `TCASM_BLESS=1 cargo test --release -p tcasm-capi --test header` and commit it.",
            line + 1
        );
    }
}
