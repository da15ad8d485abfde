// The upstream build script also runs bindgen (which needs libclang) to generate
// src/bindings.rs; here the bindings are committed and only the constant checks are compiled.
fn main() {
    cc::Build::new().file("src/consts.c").compile("userfaultfd_sys_consts");
}
