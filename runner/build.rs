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
}
