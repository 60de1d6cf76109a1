//! Builds workspace packages for `wasm32-wasip1` from a build script: the runner embeds the
//! filter; the tests load the host's test filters. One implementation for both.
//!
//! The wasm build runs in its own target directory beside the outer build's: the outer cargo
//! holds the lock on the usual one.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const WASM_TARGET: &str = "wasm32-wasip1";

/// The workspace root, for a build script of a package directly inside it.
pub fn workspace() -> PathBuf {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    manifest_dir.parent().expect("the package lives inside the workspace").to_path_buf()
}

/// Builds `packages` (with the `wasm` profile) and returns the directory holding their `.wasm`
/// files. Asks cargo to rerun the build script when any of `watched` (relative to the
/// workspace) changes. Panics, saying what to do, when the build fails: that is how a build
/// script reports.
pub fn build(packages: &[&str], watched: &[&str]) -> PathBuf {
    let workspace = workspace();
    // The workspace manifest holds the `wasm` profile; the lock file, every dependency's version.
    for path in watched.iter().chain(&["Cargo.toml", "Cargo.lock"]) {
        println!("cargo:rerun-if-changed={}", workspace.join(path).display());
    }
    // Beside the outer build's own output, so separate target directories stay separate.
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    let outer_target = env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace.join("target"));
    let target_dir = outer_target.join("wasm-build");
    run_cargo(&workspace, &target_dir, packages);
    target_dir.join(WASM_TARGET).join("wasm")
}

fn run_cargo(workspace: &Path, target_dir: &Path, packages: &[&str]) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        .args(["build", "--locked", "--target", WASM_TARGET, "--profile", "wasm", "--target-dir"])
        .arg(target_dir);
    for package in packages {
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
            "building {} for {WASM_TARGET} failed (see above). If the target is missing, run \
             `rustup target add {WASM_TARGET}` or `make setup`.",
            packages.join(", ")
        );
    }
}
