//! `include/tcasm.h` (committed, what C and Fortran programs compile against) is exactly
//! what cbindgen makes of `src/lib.rs` (done by `build.rs`). `TCASM_BLESS=1` rewrites it.
use std::path::Path;

#[test]
fn header_is_current() {
    let generated = std::fs::read_to_string(env!("TCASM_GENERATED_HEADER")).expect("build.rs wrote the header");
    let committed_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../include/tcasm.h");
    if std::env::var("TCASM_BLESS").as_deref() == Ok("1") {
        std::fs::write(&committed_path, &generated).unwrap();
        eprintln!("wrote {}", committed_path.display());
        return;
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    if committed != generated {
        let line = committed.lines().zip(generated.lines()).position(|(a, b)| a != b).unwrap_or(committed.lines().count().min(generated.lines().count()));
        panic!(
            "include/tcasm.h is out of date with capi/src/lib.rs (first difference at line {}).\n\
             Regenerate it with `TCASM_BLESS=1 cargo test --release -p tcasm-capi --test header` and commit it.",
            line + 1
        );
    }
}
