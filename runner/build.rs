//! Builds the filter (and the host's test filters) for wasm32-wasip1, so that `ory-proxy` embeds
//! the filter and `cargo build` alone produces a complete binary.
//!
//! The wasm build runs in a separate target directory: the outer cargo holds the lock on the
//! usual one. `ORY_PROXY_FILTER_WASM=<file>` embeds a prebuilt module instead of building one.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const WASM_TARGET: &str = "wasm32-wasip1";
const PACKAGES: [&str; 6] = [
    "ory-proxy-filter",
    "test-filter-headers",
    "test-filter-bodies",
    "test-filter-callouts",
    "test-filter-faulty",
    "test-filter-unknown-import",
];

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.parent().expect("the runner lives inside the workspace").to_path_buf();
    for watched in ["filter/src", "filter/Cargo.toml", "test-filters", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", workspace.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=ORY_PROXY_FILTER_WASM");

    // Beside the outer build's own output, so separate target directories stay separate.
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    let outer_target = env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace.join("target"));
    let target_dir = outer_target.join("wasm-build");
    build_wasm(&workspace, &target_dir);
    let out = target_dir.join(WASM_TARGET).join("wasm");

    let filter = match env::var_os("ORY_PROXY_FILTER_WASM") {
        Some(path) => PathBuf::from(path),
        None => out.join("ory_proxy_filter.wasm"),
    };
    if !filter.is_file() {
        panic!("the filter module {} does not exist", filter.display());
    }
    println!("cargo:rerun-if-changed={}", filter.display());
    println!("cargo:rustc-env=ORY_PROXY_FILTER_WASM_PATH={}", filter.display());
    println!("cargo:rustc-env=ORY_PROXY_TEST_FILTERS_DIR={}", out.display());
}

fn build_wasm(workspace: &Path, target_dir: &Path) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        .args(["build", "--locked", "--target", WASM_TARGET, "--profile", "wasm", "--target-dir"])
        .arg(target_dir);
    for package in PACKAGES {
        command.args(["-p", package]);
    }
    // The outer build's settings (flags, wrappers such as clippy's, its target) are not the wasm
    // build's: start from a clean environment with only what finds the toolchain.
    command.env_clear();
    for keep in ["PATH", "HOME", "CARGO_HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN", "TMPDIR"] {
        if let Some(value) = env::var_os(keep) {
            command.env(keep, value);
        }
    }
    let status = command.status().expect("running cargo for the wasm build");
    if !status.success() {
        panic!(
            "building the filter for {WASM_TARGET} failed (see above). If the target is missing, \
             run `rustup target add {WASM_TARGET}` or `make setup`."
        );
    }
}
