//! Trusting the local CA where browsers look, mkcert-style, one file per store:
//!
//! - **Linux**: the system anchors ([`linux`]: `update-ca-certificates` on Debian/Ubuntu,
//!   `update-ca-trust` on Fedora/RHEL; through `sudo -n` when not root) and every NSS database
//!   ([`nss`]: Chrome's `~/.pki/nssdb`, made when missing, and Firefox profiles, also snap and
//!   flatpak ones) with `certutil`;
//! - **macOS**: the login keychain ([`macos`]: `security add-trusted-cert`);
//! - **Windows**: the user's ROOT store ([`windows`]: `certutil -user -addstore Root`).
//!
//! Each store is a [`TrustStore`]; [`install`] and [`uninstall`] are the one loop over them that
//! records and reports. Every external command goes through [`Commands`], so tests can check the
//! exact commands. Nothing here fails start-up: each store's outcome is reported, with what to do
//! when it did not work. What was installed is recorded in `$ORY_PROXY_HOME/trust.json` so that
//! `ory-proxy cert uninstall` can remove it again.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::tls::LocalCa;

mod commands;
mod linux;
mod macos;
mod nss;
mod windows;

pub use commands::{CommandOutput, Commands, SystemCommands};
pub use linux::{DEBIAN_ANCHORS, DEBIAN_FILE, FEDORA_ANCHORS, FEDORA_FILE};
pub use nss::nickname;

/// The record of what was installed where.
pub const TRUST_FILE: &str = "trust.json";
/// Restricts the kinds of store (comma-separated: `system`, `nss`, `keychain`, `windows`); unset
/// means all of them. For tests and for people who want only some.
pub const STORES_ENV: &str = "ORY_PROXY_TRUST_STORES";

/// The operating system whose stores to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Os {
    Linux,
    MacOs,
    Windows,
    Other,
}

impl Os {
    pub fn current() -> Os {
        if cfg!(target_os = "linux") {
            Os::Linux
        } else if cfg!(target_os = "macos") {
            Os::MacOs
        } else if cfg!(windows) {
            Os::Windows
        } else {
            Os::Other
        }
    }
}

/// A kind of trust store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The Linux system anchors.
    System,
    /// An NSS database (Chrome and Firefox on Linux).
    Nss,
    /// The macOS login keychain.
    Keychain,
    /// The Windows user ROOT store.
    Windows,
}

impl Kind {
    /// Every kind, in the order stores are installed into.
    const ALL: [Kind; 4] = [Kind::System, Kind::Nss, Kind::Keychain, Kind::Windows];

    fn store(self) -> &'static dyn TrustStore {
        match self {
            Kind::System => &linux::SystemAnchors,
            Kind::Nss => &nss::Nss,
            Kind::Keychain => &macos::Keychain,
            Kind::Windows => &windows::RootStore,
        }
    }
}

/// Everything the trust code looks at, so tests can replace each part.
pub struct TrustEnv<'a> {
    pub os: Os,
    /// The user's home directory (NSS databases, the macOS keychain).
    pub home: Option<PathBuf>,
    /// The file system root for the system anchors: `/`, or a temporary directory in tests.
    pub root: PathBuf,
    /// Running as root (no `sudo` needed for the system store).
    pub is_root: bool,
    /// The kinds of store to touch; empty means all.
    pub only: Vec<Kind>,
    pub commands: &'a dyn Commands,
}

impl TrustEnv<'static> {
    /// This machine, this user, real commands; `ORY_PROXY_TRUST_STORES` restricts the stores.
    pub fn from_system() -> TrustEnv<'static> {
        static COMMANDS: SystemCommands = SystemCommands;
        let only = std::env::var(STORES_ENV)
            .unwrap_or_default()
            .split(',')
            .filter_map(|name| match name.trim() {
                "system" => Some(Kind::System),
                "nss" => Some(Kind::Nss),
                "keychain" => Some(Kind::Keychain),
                "windows" => Some(Kind::Windows),
                "" => None,
                other => {
                    tracing::warn!("{STORES_ENV}: unknown store `{other}` (system, nss, keychain, windows)");
                    None
                }
            })
            .collect();
        TrustEnv {
            os: Os::current(),
            home: dirs::home_dir(),
            root: PathBuf::from("/"),
            is_root: is_root(),
            only,
            commands: &COMMANDS,
        }
    }
}

impl TrustEnv<'_> {
    fn wants(&self, kind: Kind) -> bool {
        self.only.is_empty() || self.only.contains(&kind)
    }

    /// The stores of this OS that are wanted, in order.
    fn stores(&self) -> impl Iterator<Item = &'static dyn TrustStore> + '_ {
        Kind::ALL.into_iter().filter(|kind| self.wants(*kind)).map(Kind::store).filter(|store| store.os() == self.os)
    }
}

#[cfg(unix)]
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(not(unix))]
fn is_root() -> bool {
    false
}

/// One kind of trust store: how it takes the CA in and gives it back. The stores run commands
/// and say what came of each place; [`install`] and [`uninstall`] record and report it.
trait TrustStore {
    /// The OS the store belongs to.
    fn os(&self) -> Os;

    /// How the report names a place in the store (a [`Record::location`]).
    fn describe(&self, location: &str) -> String;

    /// Puts `ca` into every place of the store that does not have it yet: one placement per
    /// place, or one failure for the whole store when it cannot be used at all. `records` is
    /// what earlier runs installed.
    fn install(&self, ca: &LocalCa, env: &TrustEnv, records: &Records) -> Vec<Placement>;

    /// Takes the CA out of the place `record` names.
    fn remove(&self, record: &Record, env: &TrustEnv) -> Result<(), String>;

    /// Whether each place of the store trusts `ca`, without changing anything: `Err` says why
    /// not. Stores that cannot be asked trust the record.
    fn check(&self, ca: &LocalCa, _env: &TrustEnv, records: &Records) -> Vec<Placement<()>> {
        let recorded: Vec<Placement<()>> = records
            .installed
            .iter()
            .filter(|record| record.kind == self.kind() && record.fingerprint == ca.fingerprint())
            .map(|record| (self.describe(&record.location), Ok(())))
            .collect();
        if recorded.is_empty() {
            return vec![(self.describe("of this user"), Err("ory-proxy has not installed the local CA here".into()))];
        }
        recorded
    }

    /// The kind of store this is, as records name it.
    fn kind(&self) -> Kind;

    /// Takes `ca` out of the places that have it although no record says so (`trust.json` lost,
    /// an older run), except those `handled` names (by [`TrustStore::describe`]). Stores that
    /// cannot be asked whether they have it trust the record, and find nothing here.
    fn remove_unrecorded(&self, _ca: &LocalCa, _env: &TrustEnv, _handled: &dyn Fn(&str) -> bool) -> Vec<Placement<()>> {
        Vec::new()
    }
}

/// What came of one place: the place as the report names it, and what happened or why not.
type Placement<T = Placed> = (String, Result<T, String>);

/// How the CA came to be in a place.
enum Placed {
    /// Put there now.
    Now(Record),
    /// Found there, the store says: recorded again.
    Found(Record),
    /// There, the record says (the store cannot be asked).
    Recorded,
}

/// For stores that cannot be asked: the CA is there when `record` is recorded, else `put` puts it.
fn put_unless_recorded(
    record: Record,
    records: &Records,
    put: impl FnOnce() -> Result<(), String>,
) -> Result<Placed, String> {
    if records.has(record.kind, &record.location, &record.fingerprint) {
        return Ok(Placed::Recorded);
    }
    put().map(|()| Placed::Now(record))
}

/// What happened to one store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Installed(String),
    AlreadyInstalled(String),
    Removed(String),
    /// The store, and why (with what to do about it).
    Failed(String, String),
}

/// What [`install`] or [`uninstall`] did, store by store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub outcomes: Vec<Outcome>,
}

impl Report {
    pub fn failures(&self) -> impl Iterator<Item = (&str, &str)> {
        self.outcomes.iter().filter_map(|o| match o {
            Outcome::Failed(store, reason) => Some((store.as_str(), reason.as_str())),
            _ => None,
        })
    }

    /// Whether uninstalling has dealt with `store` already, removed or not.
    fn handled(&self, store: &str) -> bool {
        self.outcomes.iter().any(|o| matches!(o, Outcome::Removed(s) | Outcome::Failed(s, _) if s == store))
    }

    fn removal(&mut self, (store, result): Placement<()>) {
        self.outcomes.push(match result {
            Ok(()) => Outcome::Removed(store),
            Err(reason) => Outcome::Failed(store, reason),
        });
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for outcome in &self.outcomes {
            match outcome {
                Outcome::Installed(store) => writeln!(f, "  trusted now by     {store}")?,
                Outcome::AlreadyInstalled(store) => writeln!(f, "  trusted by         {store}")?,
                Outcome::Removed(store) => writeln!(f, "  removed from       {store}")?,
                Outcome::Failed(store, reason) => writeln!(f, "  NOT trusted by     {store}: {reason}")?,
            }
        }
        Ok(())
    }
}

/// One place the CA was put.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub kind: Kind,
    /// A file (system anchors), an NSS database (`sql:<dir>`) or a keychain.
    pub location: String,
    pub fingerprint: String,
    /// The name the store knows it by (NSS nickname, keychain common name, Windows serial).
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Records {
    installed: Vec<Record>,
}

fn read_records(state: &Path) -> Records {
    let path = state.join(TRUST_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).unwrap_or_else(|error| {
            tracing::warn!("{} is damaged ({error}); starting a new one", path.display());
            Records::default()
        }),
        Err(_) => Records::default(),
    }
}

fn write_records(state: &Path, records: &Records) {
    let path = state.join(TRUST_FILE);
    let text = serde_json::to_string_pretty(records).expect("records serialise");
    if let Err(error) = fs::create_dir_all(state).and_then(|()| fs::write(&path, text + "\n")) {
        tracing::warn!("cannot record the trust stores in {}: {error}", path.display());
    }
}

impl Records {
    fn upsert(&mut self, record: Record) {
        self.installed.retain(|r| !(r.kind == record.kind && r.location == record.location));
        self.installed.push(record);
    }

    fn remove(&mut self, kind: Kind, location: &str) {
        self.installed.retain(|r| !(r.kind == kind && r.location == location));
    }

    fn has(&self, kind: Kind, location: &str, fingerprint: &str) -> bool {
        self.installed.iter().any(|r| r.kind == kind && r.location == location && r.fingerprint == fingerprint)
    }
}

/// Installs `ca` into every store of this OS that is not trusting it yet. Never fails: the
/// report says what worked and what did not.
pub fn install(ca: &LocalCa, state: &Path, env: &TrustEnv) -> Report {
    let mut report = Report::default();
    let mut records = read_records(state);
    if env.os == Os::Other {
        report.outcomes.push(Outcome::Failed(
            "this OS's trust store".into(),
            format!("ory-proxy cannot install into it; trust {} yourself", ca.cert_path().display()),
        ));
    }
    for store in env.stores() {
        for (place, result) in store.install(ca, env, &records) {
            let outcome = match result {
                Ok(Placed::Now(record)) => {
                    records.upsert(record);
                    Outcome::Installed(place)
                }
                Ok(Placed::Found(record)) => {
                    records.upsert(record);
                    Outcome::AlreadyInstalled(place)
                }
                Ok(Placed::Recorded) => Outcome::AlreadyInstalled(place),
                Err(reason) => Outcome::Failed(place, reason),
            };
            report.outcomes.push(outcome);
        }
    }
    write_records(state, &records);
    report
}

/// Whether every store of this OS trusts `ca`, store by store, changing nothing.
pub fn check(ca: &LocalCa, state: &Path, env: &TrustEnv) -> Report {
    let records = read_records(state);
    let mut report = Report::default();
    for store in env.stores() {
        for (place, result) in store.check(ca, env, &records) {
            report.outcomes.push(match result {
                Ok(()) => Outcome::AlreadyInstalled(place),
                Err(reason) => Outcome::Failed(place, reason),
            });
        }
    }
    report
}

/// Removes `ca` from every store it was installed in (by the record, and where the store can be
/// asked also wherever it is found). `ca` is `None` when the CA files are gone: then only the
/// record is used.
pub fn uninstall(ca: Option<&LocalCa>, state: &Path, env: &TrustEnv) -> Report {
    let mut report = Report::default();
    let mut records = read_records(state);
    for record in records.installed.clone() {
        if !env.wants(record.kind) {
            continue;
        }
        let store = record.kind.store();
        let result = store.remove(&record, env);
        if result.is_ok() {
            records.remove(record.kind, &record.location);
        }
        report.removal((store.describe(&record.location), result));
    }
    if let Some(ca) = ca {
        for store in env.stores() {
            let removals = store.remove_unrecorded(ca, env, &|place| report.handled(place));
            for removal in removals {
                report.removal(removal);
            }
        }
    }
    write_records(state, &records);
    report
}

#[cfg(test)]
mod tests;
