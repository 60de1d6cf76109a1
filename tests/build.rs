//! Builds the host's test filters (`test-filters/`) for wasm32-wasip1: the end-to-end and host
//! tests load them; nothing that ships does.

fn main() {
    let packages = [
        "test-filter-headers",
        "test-filter-bodies",
        "test-filter-callouts",
        "test-filter-faulty",
        "test-filter-unknown-import",
        "test-filter-noop",
        "test-filter-plugin",
    ];
    let out = wasm_build::build(&packages, &["test-filters"]);
    println!("cargo:rustc-env=ORY_PROXY_TEST_FILTERS_DIR={}", out.display());
}
