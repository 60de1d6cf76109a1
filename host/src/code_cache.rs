//! Compiled code kept on disk between runs. Cranelift needs more than a second for a 3 MB
//! filter; mapping code compiled earlier by the same wasmtime with the same settings takes
//! milliseconds, and the mapped pages are shared and can be dropped by the kernel.

use std::fs;
use std::hash::{Hash as _, Hasher as _};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use wasmtime::{Engine, Module};

/// Entries kept in the directory: one per filter build, and a developer switches between a few.
const KEEP: usize = 8;

pub(crate) fn compile(engine: &Engine, wasm: &[u8]) -> anyhow::Result<Module> {
    Module::new(engine, wasm).map_err(anyhow::Error::from).context("the filter is not a valid WebAssembly module")
}

/// The module for `wasm` (whose SHA-256 is `digest`): read from `dir` when compiled there
/// before, else compiled and written there. A cache that cannot be read or written only costs
/// the compile, with a warning.
pub(crate) fn module(engine: &Engine, wasm: &[u8], digest: &[u8; 32], dir: &Path) -> anyhow::Result<Module> {
    let path = entry(engine, digest, dir);
    if path.is_file() {
        // SAFETY: wasmtime requires a file written by `Module::serialize`. Only `store` writes
        // this directory, renaming a complete file into place, and the name carries the
        // module's digest and the engine's compatibility hash; wasmtime also checks the
        // version and settings recorded in the file and refuses a mismatch.
        match unsafe { Module::deserialize_file(engine, &path) } {
            Ok(module) => return Ok(module),
            Err(error) => tracing::warn!("compiling the filter again: {} is unusable: {error:#}", path.display()),
        }
    }
    // Seconds of silence otherwise, at a first start.
    tracing::info!(
        "compiling the filter for this machine, once: later starts reuse the code kept in {}",
        dir.display()
    );
    let module = compile(engine, wasm)?;
    match store(&module, &path) {
        Ok(()) => prune(dir, &path),
        Err(error) => tracing::warn!("could not keep the compiled filter in {}: {error:#}", dir.display()),
    }
    Ok(module)
}

/// `<module digest>-<engine compatibility hash>.cwasm`.
fn entry(engine: &Engine, digest: &[u8; 32], dir: &Path) -> PathBuf {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let module: String = digest[..16].iter().map(|byte| format!("{byte:02x}")).collect();
    dir.join(format!("{module}-{:016x}.cwasm", hasher.finish()))
}

/// Written under a name of this process's own, then renamed: a reader never sees half a file.
fn store(module: &Module, path: &Path) -> anyhow::Result<()> {
    let dir = path.parent().context("a cache entry needs a directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let bytes = module.serialize().map_err(anyhow::Error::from).context("serializing the compiled filter")?;
    let temporary = path.with_extension(format!("{}.tmp", std::process::id()));
    let written = fs::File::create(&temporary)
        .and_then(|mut file| file.write_all(&bytes).and_then(|()| file.sync_all()))
        .and_then(|()| fs::rename(&temporary, path));
    if written.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    written.with_context(|| format!("writing {}", path.display()))
}

/// Removes all but the [`KEEP`] most recently written entries (never `current`).
fn prune(dir: &Path, current: &Path) {
    let Ok(listing) = fs::read_dir(dir) else { return };
    let mut entries: Vec<(std::time::SystemTime, PathBuf)> = listing
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "cwasm") && path != current)
        .filter_map(|path| Some((fs::metadata(&path).ok()?.modified().ok()?, path)))
        .collect();
    entries.sort_by_key(|entry| std::cmp::Reverse(entry.0));
    for (_, old) in entries.into_iter().skip(KEEP - 1) {
        let _ = fs::remove_file(old);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(module (func (export "answer") (result i32) i32.const 42))`, assembled by hand.
    const ANSWER_WASM: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
        0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7f, // types: () -> i32
        0x03, 0x02, 0x01, 0x00, // functions: one of type 0
        0x07, 0x0a, 0x01, 0x06, b'a', b'n', b's', b'w', b'e', b'r', 0x00, 0x00, // export "answer"
        0x0a, 0x06, 0x01, 0x04, 0x00, 0x41, 0x2a, 0x0b, // code: i32.const 42
    ];

    /// A fresh directory under the system's temporary one, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("code-cache-test-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("temporary directory");
            TempDir(dir)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn answer(engine: &Engine, module: &Module) -> i32 {
        let mut store = wasmtime::Store::new(engine, ());
        let instance = wasmtime::Instance::new(&mut store, module, &[]).expect("instantiates");
        let func = instance.get_typed_func::<(), i32>(&mut store, "answer").expect("exported");
        func.call(&mut store, ()).expect("runs")
    }

    fn wasm() -> Vec<u8> {
        ANSWER_WASM.to_vec()
    }

    #[test]
    fn a_second_load_maps_what_the_first_compiled() {
        let dir = TempDir::new();
        let engine = Engine::default();
        let wasm = wasm();
        let digest = [7u8; 32];
        let first = module(&engine, &wasm, &digest, dir.path()).expect("compiles");
        assert_eq!(answer(&engine, &first), 42);
        let path = entry(&engine, &digest, dir.path());
        assert!(path.is_file(), "the compiled code is kept at {}", path.display());
        let written = fs::metadata(&path).and_then(|m| m.modified()).expect("mtime");
        let second = module(&engine, &wasm, &digest, dir.path()).expect("loads");
        assert_eq!(answer(&engine, &second), 42);
        assert_eq!(fs::metadata(&path).and_then(|m| m.modified()).expect("mtime"), written, "read, not rewritten");
    }

    #[test]
    fn a_damaged_entry_is_compiled_again_and_replaced() {
        let dir = TempDir::new();
        let engine = Engine::default();
        let digest = [9u8; 32];
        let path = entry(&engine, &digest, dir.path());
        fs::write(&path, b"not compiled code").expect("write");
        let module = module(&engine, &wasm(), &digest, dir.path()).expect("compiles instead");
        assert_eq!(answer(&engine, &module), 42);
        assert_ne!(fs::read(&path).expect("read"), b"not compiled code", "replaced");
    }

    #[test]
    fn an_unwritable_cache_only_costs_the_compile() {
        let dir = TempDir::new();
        let blocked = dir.path().join("file");
        fs::write(&blocked, b"").expect("write");
        let engine = Engine::default();
        let module = module(&engine, &wasm(), &[1u8; 32], &blocked).expect("compiles anyway");
        assert_eq!(answer(&engine, &module), 42);
    }

    #[test]
    fn only_the_newest_entries_are_kept() {
        let dir = TempDir::new();
        let engine = Engine::default();
        let wasm = wasm();
        for n in 0..(KEEP as u8 + 3) {
            module(&engine, &wasm, &[n; 32], dir.path()).expect("compiles");
        }
        let kept = fs::read_dir(dir.path()).expect("list").count();
        assert_eq!(kept, KEEP);
        assert!(entry(&engine, &[KEEP as u8 + 2; 32], dir.path()).is_file(), "the newest is kept");
    }
}
