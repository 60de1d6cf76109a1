//! What the runner keeps between runs, in `$ORY_PROXY_HOME` (default: the OS config directory):
//! the JWT signing key, so that apps' JWKS caches survive restarts, and the compiled filter (in
//! its cache directory), so that a restart does not compile it again.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context as _, bail};
use ory_proxy_filter::token::SigningKey;

pub const SIGNING_KEY_FILE: &str = "jwt-signing-key.pem";
/// The key `ory-proxy key rotate` retired: published in the JWKS for a while after its file was
/// written, never used to sign.
pub const PREVIOUS_KEY_FILE: &str = "jwt-signing-key.previous.pem";

/// The state directory: `$ORY_PROXY_HOME`, else `<config dir>/ory-proxy`.
pub fn dir() -> anyhow::Result<PathBuf> {
    if let Some(home) = std::env::var_os("ORY_PROXY_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    match dirs::config_dir() {
        Some(config) => Ok(config.join("ory-proxy")),
        None => bail!("cannot find a configuration directory for ory-proxy's state: set ORY_PROXY_HOME"),
    }
}

/// Where compiled filter code is kept between runs (see `proxy_wasm_host::Plugin::load_cached`):
/// `$ORY_PROXY_HOME/cache`, else `<cache dir>/ory-proxy`; `None` when neither is known, and every
/// start compiles.
pub fn code_cache_dir() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("ORY_PROXY_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(home).join("cache"));
    }
    dirs::cache_dir().map(|cache| cache.join("ory-proxy"))
}

/// Reads a key file given with `--jwt-key`: PKCS#8 or SEC1 PEM, or a private JWK.
pub fn read_signing_key(path: &Path) -> anyhow::Result<(String, SigningKey)> {
    let text = fs::read_to_string(path).with_context(|| format!("--jwt-key {}: cannot read it", path.display()))?;
    let key = SigningKey::from_config_value(&serde_json::Value::String(text.clone()))
        .map_err(|reason| anyhow::anyhow!("--jwt-key {}: {reason}", path.display()))?;
    Ok((text, key))
}

/// The key kept in `home`, made on first use (readable by the owner only).
pub fn kept_signing_key(home: &Path) -> anyhow::Result<(String, SigningKey)> {
    let path = home.join(SIGNING_KEY_FILE);
    if path.exists() {
        let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let key = SigningKey::from_pem(&text).map_err(|reason| {
            anyhow::anyhow!("{} is damaged ({reason}): delete it to make a new key", path.display())
        })?;
        return Ok((text, key));
    }
    let (text, key) = new_key()?;
    write_private(&path, text.as_bytes())?;
    Ok((text, key))
}

/// A retired key and when it was retired (its file's modification time: `key rotate` wrote it).
#[derive(Debug, Clone)]
pub struct RetiredKey {
    pub key: SigningKey,
    pub retired: SystemTime,
}

/// Reads a retired key's file; its modification time is when it was retired.
pub fn read_retired_key(path: &Path) -> anyhow::Result<RetiredKey> {
    let text = fs::read_to_string(path).with_context(|| format!("{}: cannot read it", path.display()))?;
    let key = SigningKey::from_config_value(&serde_json::Value::String(text))
        .map_err(|reason| anyhow::anyhow!("{}: {reason}", path.display()))?;
    let retired = fs::metadata(path).and_then(|meta| meta.modified()).with_context(|| format!("{}", path.display()))?;
    Ok(RetiredKey { key, retired })
}

/// The previous key kept in `home`, if `key rotate` retired one.
pub fn kept_previous_key(home: &Path) -> anyhow::Result<Option<RetiredKey>> {
    let path = home.join(PREVIOUS_KEY_FILE);
    if !path.exists() {
        return Ok(None);
    }
    read_retired_key(&path).map(Some)
}

/// Makes a new signing key in `home` and keeps the current one as the previous (replacing any
/// older previous key). Returns the new key and the one it retired.
pub fn rotate(home: &Path) -> anyhow::Result<(SigningKey, Option<SigningKey>)> {
    let current = home.join(SIGNING_KEY_FILE);
    let retired = match current.exists() {
        true => {
            let (text, key) = kept_signing_key(home)?;
            // First the copy, then the new key: a crash in between leaves the current key in use.
            write_private(&home.join(PREVIOUS_KEY_FILE), text.as_bytes())?;
            Some(key)
        }
        false => None,
    };
    let (text, key) = new_key()?;
    write_private(&current, text.as_bytes())?;
    Ok((key, retired))
}

fn new_key() -> anyhow::Result<(String, SigningKey)> {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating a P-256 key")?;
    let text = pair.serialize_pem();
    let key = SigningKey::from_pem(&text).map_err(|reason| anyhow::anyhow!("the new key is unusable: {reason}"))?;
    Ok((text, key))
}

/// Writes a secret: created with mode 0600 under a temporary name, then renamed into place, so a
/// crash never leaves a half-written key behind.
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("a state file needs a directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let temporary = path.with_extension("tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(&temporary).with_context(|| format!("creating {}", temporary.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", temporary.display()))?;
    fs::rename(&temporary, path).with_context(|| format!("moving the new file to {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ory-proxy-state-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn the_key_is_made_once_private_and_reused() {
        let dir = temp_dir("reuse");
        let (first, key) = kept_signing_key(&dir).unwrap();
        let (second, again) = kept_signing_key(&dir).unwrap();
        assert_eq!(first, second);
        assert_eq!(key.kid(), again.kid());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(dir.join(SIGNING_KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rotating_keeps_the_current_key_as_the_previous_one() {
        let dir = temp_dir("rotate");
        let (first_new, none) = rotate(&dir).unwrap();
        assert!(none.is_none(), "nothing to retire yet");
        assert!(kept_previous_key(&dir).unwrap().is_none());
        let (second_new, retired) = rotate(&dir).unwrap();
        assert_eq!(retired.map(|key| key.kid().to_string()), Some(first_new.kid().to_string()));
        let (_, current) = kept_signing_key(&dir).unwrap();
        assert_eq!(current.kid(), second_new.kid(), "the new key signs from now on");
        let previous = kept_previous_key(&dir).unwrap().expect("a previous key");
        assert_eq!(previous.key.kid(), first_new.kid());
        assert!(previous.retired.elapsed().unwrap() < std::time::Duration::from_secs(60));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(dir.join(PREVIOUS_KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the retired key is still a secret");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_key_is_a_clear_error_and_is_left_alone() {
        let dir = temp_dir("damaged");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(SIGNING_KEY_FILE), "garbage").unwrap();
        let error = kept_signing_key(&dir).unwrap_err().to_string();
        assert!(error.contains("damaged"), "{error}");
        assert_eq!(fs::read_to_string(dir.join(SIGNING_KEY_FILE)).unwrap(), "garbage");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_given_key_file_must_be_a_key() {
        let dir = temp_dir("given");
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key.pem");
        fs::write(&path, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
        let error = read_signing_key(&path).unwrap_err().to_string();
        assert!(error.starts_with("--jwt-key"), "{error}");
        assert!(read_signing_key(&dir.join("missing.pem")).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
