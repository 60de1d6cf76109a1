//! Builds the filter for wasm32-wasip1, so that `ory-proxy` embeds it and `cargo build` alone
//! produces a complete binary. (The host's test filters are built by the tests crate, for tests
//! only.) `ORY_PROXY_FILTER_WASM=<file>` embeds a prebuilt module instead.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=ORY_PROXY_FILTER_WASM");
    let filter = match std::env::var_os("ORY_PROXY_FILTER_WASM") {
        Some(path) => PathBuf::from(path),
        None => {
            wasm_build::build(&["ory-proxy-filter"], &["filter/src", "filter/Cargo.toml"]).join("ory_proxy_filter.wasm")
        }
    };
    if !filter.is_file() {
        panic!("the filter module {} does not exist", filter.display());
    }
    println!("cargo:rerun-if-changed={}", filter.display());
    println!("cargo:rustc-env=ORY_PROXY_FILTER_WASM_PATH={}", filter.display());
    // Its digest names its compiled code: known now, a start need not read the module to find it.
    let wasm = std::fs::read(&filter).unwrap_or_else(|e| panic!("reading {}: {e}", filter.display()));
    let digest = <sha2::Sha256 as sha2::Digest>::digest(&wasm);
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("ory_proxy_filter.wasm.sha256"), digest).expect("writing the filter's digest");
}
