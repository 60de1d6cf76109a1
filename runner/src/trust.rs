//! Trusting the local CA where browsers look, mkcert-style:
//!
//! - **Linux**: the system anchors (`update-ca-certificates` on Debian/Ubuntu, `update-ca-trust`
//!   on Fedora/RHEL; through `sudo -n` when not root) and every NSS database (Chrome's
//!   `~/.pki/nssdb`, made when missing, and Firefox profiles, also snap and flatpak ones) with
//!   `certutil`;
//! - **macOS**: the login keychain (`security add-trusted-cert`);
//! - **Windows**: the user's ROOT store (`certutil -user -addstore Root`).
//!
//! Every external command goes through [`Commands`], so tests can check the exact commands.
//! Nothing here fails start-up: each store's outcome is reported, with what to do when it did not
//! work. What was installed is recorded in `$ORY_PROXY_HOME/trust.json` so that
//! `ory-proxy cert uninstall` can remove it again.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::tls::LocalCa;

/// Where the CA goes among Debian's system anchors.
pub const DEBIAN_ANCHORS: &str = "usr/local/share/ca-certificates";
pub const DEBIAN_FILE: &str = "ory-proxy-local-ca.crt";
/// Where the CA goes among Fedora's system anchors.
pub const FEDORA_ANCHORS: &str = "etc/pki/ca-trust/source/anchors";
pub const FEDORA_FILE: &str = "ory-proxy-local-ca.pem";
/// The record of what was installed where.
pub const TRUST_FILE: &str = "trust.json";
/// Restricts the kinds of store (comma-separated: `system`, `nss`, `keychain`, `windows`); unset
/// means all of them. For tests and for people who want only some.
pub const STORES_ENV: &str = "ORY_PROXY_TRUST_STORES";

const CERTUTIL_MISSING: &str =
    "certutil not found: install libnss3-tools (Debian/Ubuntu) or nss-tools (Fedora) to trust it in Chrome/Firefox";

/// What a command printed and whether it succeeded.
#[derive(Debug, Clone, Default)]
pub struct CommandOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs external programs. [`SystemCommands`] runs them for real.
pub trait Commands {
    /// Whether `program` can be found on `PATH`.
    fn exists(&self, program: &str) -> bool;
    /// Runs `program` with `args`, with no standard input (nothing may prompt).
    fn run(&self, program: &str, args: &[String]) -> std::io::Result<CommandOutput>;
}

/// The real thing.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemCommands;

impl Commands for SystemCommands {
    fn exists(&self, program: &str) -> bool {
        let Some(path) = std::env::var_os("PATH") else { return false };
        std::env::split_paths(&path).any(|dir| {
            let candidate = dir.join(program);
            candidate.is_file() || (cfg!(windows) && candidate.with_extension("exe").is_file())
        })
    }

    fn run(&self, program: &str, args: &[String]) -> std::io::Result<CommandOutput> {
        tracing::debug!(program, ?args, "running");
        let output = std::process::Command::new(program).args(args).stdin(std::process::Stdio::null()).output()?;
        Ok(CommandOutput {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

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

    fn run(&self, program: &str, args: &[&str]) -> Result<CommandOutput, String> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        self.commands.run(program, &args).map_err(|error| format!("cannot run {program}: {error}"))
    }

    /// Runs a command that must succeed; the error is its own words.
    fn run_ok(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let output = self.run(program, args)?;
        if output.success {
            Ok(())
        } else {
            let said = output.stderr.trim();
            let said = if said.is_empty() { output.stdout.trim() } else { said };
            Err(format!("`{program} {}` failed: {said}", args.join(" ")))
        }
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

/// The NSS nickname of `ca`: one per CA, so CAs of different `$ORY_PROXY_HOME`s do not collide.
pub fn nickname(ca: &LocalCa) -> String {
    format!("ory-proxy local CA {}", &ca.fingerprint()[..16])
}

/// Installs `ca` into every store of this OS that is not trusting it yet. Never fails: the
/// report says what worked and what did not.
pub fn install(ca: &LocalCa, state: &Path, env: &TrustEnv) -> Report {
    let mut report = Report::default();
    let mut records = read_records(state);
    match env.os {
        Os::Linux => {
            if env.wants(Kind::System) {
                linux_system_install(ca, env, &mut records, &mut report);
            }
            if env.wants(Kind::Nss) {
                nss_install(ca, env, &mut records, &mut report);
            }
        }
        Os::MacOs => {
            if env.wants(Kind::Keychain) {
                macos_install(ca, env, &mut records, &mut report);
            }
        }
        Os::Windows => {
            if env.wants(Kind::Windows) {
                windows_install(ca, env, &mut records, &mut report);
            }
        }
        Os::Other => report.outcomes.push(Outcome::Failed(
            "this OS's trust store".into(),
            format!("ory-proxy cannot install into it; trust {} yourself", ca.cert_path().display()),
        )),
    }
    write_records(state, &records);
    report
}

/// Removes `ca` from every store it was installed in (by the record, and on Linux also wherever
/// it is found). `ca` is `None` when the CA files are gone: then only the record is used.
pub fn uninstall(ca: Option<&LocalCa>, state: &Path, env: &TrustEnv) -> Report {
    let mut report = Report::default();
    let mut records = read_records(state);
    for record in records.installed.clone() {
        if !env.wants(record.kind) {
            continue;
        }
        let result = match record.kind {
            Kind::System => system_remove(Path::new(&record.location), env),
            Kind::Nss => nss_remove(&record.location, &record.name, env),
            Kind::Keychain => env.run_ok("security", &["delete-certificate", "-c", &record.name, &record.location]),
            Kind::Windows => env.run_ok("certutil", &["-user", "-delstore", "Root", &record.name]),
        };
        let store = describe(record.kind, &record.location);
        match result {
            Ok(()) => {
                records.remove(record.kind, &record.location);
                report.outcomes.push(Outcome::Removed(store));
            }
            Err(reason) => report.outcomes.push(Outcome::Failed(store, reason)),
        }
    }
    // Linux: also wherever this CA is found without a record (trust.json lost, an older run).
    if let (Os::Linux, Some(ca)) = (env.os, ca) {
        if env.wants(Kind::System) {
            for (anchors, file, _) in SYSTEM_STORES {
                let path = env.root.join(anchors).join(file);
                let recorded = report.outcomes.iter().any(|o| matches!(o, Outcome::Removed(s) | Outcome::Failed(s, _) if *s == describe(Kind::System, &path.display().to_string())));
                if !recorded && fs::read(&path).is_ok_and(|bytes| bytes == ca.cert_pem().as_bytes()) {
                    let store = describe(Kind::System, &path.display().to_string());
                    match system_remove(&path, env) {
                        Ok(()) => report.outcomes.push(Outcome::Removed(store)),
                        Err(reason) => report.outcomes.push(Outcome::Failed(store, reason)),
                    }
                }
            }
        }
        if env.wants(Kind::Nss) && env.commands.exists("certutil") {
            let name = nickname(ca);
            for db in nss_databases(env) {
                let location = db.location();
                if report.outcomes.iter().any(|o| matches!(o, Outcome::Removed(s) | Outcome::Failed(s, _) if *s == describe(Kind::Nss, &location))) {
                    continue;
                }
                if nss_has(&location, &name, env) {
                    let store = describe(Kind::Nss, &location);
                    match nss_remove(&location, &name, env) {
                        Ok(()) => report.outcomes.push(Outcome::Removed(store)),
                        Err(reason) => report.outcomes.push(Outcome::Failed(store, reason)),
                    }
                }
            }
        }
    }
    write_records(state, &records);
    report
}

fn describe(kind: Kind, location: &str) -> String {
    match kind {
        Kind::System => format!("the system store ({location})"),
        Kind::Nss => format!("NSS database {location}"),
        Kind::Keychain => format!("the keychain {location}"),
        Kind::Windows => "the Windows user ROOT store".to_string(),
    }
}

/// The Linux system anchors ory-proxy knows: directory, file name, refresh command.
const SYSTEM_STORES: [(&str, &str, &[&str]); 2] = [
    (DEBIAN_ANCHORS, DEBIAN_FILE, &["update-ca-certificates"]),
    (FEDORA_ANCHORS, FEDORA_FILE, &["update-ca-trust", "extract"]),
];

/// The first system store present on this machine: the path to write and the refresh command.
fn linux_system_store(env: &TrustEnv) -> Option<(PathBuf, &'static [&'static str])> {
    SYSTEM_STORES.iter().find_map(|(anchors, file, refresh)| {
        let dir = env.root.join(anchors);
        (dir.is_dir() && env.commands.exists(refresh[0])).then(|| (dir.join(file), *refresh))
    })
}

/// How to run a command as root: directly, through `sudo -n`, or not at all (with why).
fn as_root(env: &TrustEnv) -> Result<Vec<&'static str>, String> {
    if env.is_root {
        return Ok(Vec::new());
    }
    if !env.commands.exists("sudo") {
        return Err("needs root, and sudo is not installed".into());
    }
    match env.run("sudo", &["-n", "true"]) {
        Ok(output) if output.success => Ok(vec!["sudo", "-n"]),
        _ => Err("needs root, and sudo would ask for a password".into()),
    }
}

fn run_as_root(env: &TrustEnv, prefix: &[&str], program: &str, args: &[&str]) -> Result<(), String> {
    let mut command: Vec<&str> = prefix.to_vec();
    command.push(program);
    command.extend_from_slice(args);
    env.run_ok(command[0], &command[1..])
}

fn linux_system_install(ca: &LocalCa, env: &TrustEnv, records: &mut Records, report: &mut Report) {
    let Some((path, refresh)) = linux_system_store(env) else {
        report.outcomes.push(Outcome::Failed(
            "the system store".into(),
            "neither update-ca-certificates (Debian/Ubuntu) nor update-ca-trust (Fedora) found".into(),
        ));
        return;
    };
    let location = path.display().to_string();
    let store = describe(Kind::System, &location);
    let record =
        Record { kind: Kind::System, location: location.clone(), fingerprint: ca.fingerprint(), name: String::new() };
    if fs::read(&path).is_ok_and(|bytes| bytes == ca.cert_pem().as_bytes()) {
        records.upsert(record);
        report.outcomes.push(Outcome::AlreadyInstalled(store));
        return;
    }
    let ca_path = ca.cert_path().display().to_string();
    let result = as_root(env).and_then(|prefix| {
        run_as_root(env, &prefix, "install", &["-m", "0644", &ca_path, &location])?;
        run_as_root(env, &prefix, refresh[0], &refresh[1..])
    });
    match result {
        Ok(()) => {
            records.upsert(record);
            report.outcomes.push(Outcome::Installed(store));
        }
        Err(reason) => report.outcomes.push(Outcome::Failed(
            store,
            format!(
                "{reason}; to trust it system-wide run: sudo install -m 0644 {ca_path} {location} && sudo {}",
                refresh.join(" ")
            ),
        )),
    }
}

fn system_remove(path: &Path, env: &TrustEnv) -> Result<(), String> {
    if !path.exists() {
        return Ok(());
    }
    let refresh = SYSTEM_STORES
        .iter()
        .find(|(anchors, file, _)| env.root.join(anchors).join(file) == path)
        .map(|(_, _, refresh)| *refresh)
        .unwrap_or(&["update-ca-certificates"]);
    let location = path.display().to_string();
    let prefix =
        as_root(env).map_err(|reason| format!("{reason}; run: sudo rm {location} && sudo {}", refresh.join(" ")))?;
    run_as_root(env, &prefix, "rm", &["-f", &location])?;
    run_as_root(env, &prefix, refresh[0], &refresh[1..])
}

/// An NSS database.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NssDb {
    dir: PathBuf,
    /// `sql` (cert9.db) or `dbm` (the old cert8.db).
    format: &'static str,
}

impl NssDb {
    fn location(&self) -> String {
        format!("{}:{}", self.format, self.dir.display())
    }
}

fn nss_format(dir: &Path) -> Option<&'static str> {
    if dir.join("cert9.db").is_file() {
        Some("sql")
    } else if dir.join("cert8.db").is_file() {
        Some("dbm")
    } else {
        None
    }
}

/// Chrome's database (`~/.pki/nssdb`, whether it exists yet or not) and every existing one of
/// snap's Chromium and of Firefox profiles.
fn nss_databases(env: &TrustEnv) -> Vec<NssDb> {
    let Some(home) = &env.home else { return Vec::new() };
    let chrome = home.join(".pki/nssdb");
    let mut dbs = vec![NssDb { format: nss_format(&chrome).unwrap_or("sql"), dir: chrome }];
    let snap_chromium = home.join("snap/chromium/current/.pki/nssdb");
    if let Some(format) = nss_format(&snap_chromium) {
        dbs.push(NssDb { dir: snap_chromium, format });
    }
    for profiles in
        [".mozilla/firefox", "snap/firefox/common/.mozilla/firefox", ".var/app/org.mozilla.firefox/.mozilla/firefox"]
    {
        let Ok(entries) = fs::read_dir(home.join(profiles)) else { continue };
        let mut found: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect();
        found.sort();
        for dir in found {
            if let Some(format) = nss_format(&dir) {
                dbs.push(NssDb { dir, format });
            }
        }
    }
    dbs
}

fn nss_has(location: &str, name: &str, env: &TrustEnv) -> bool {
    env.run("certutil", &["-L", "-d", location, "-n", name]).is_ok_and(|output| output.success)
}

fn nss_remove(location: &str, name: &str, env: &TrustEnv) -> Result<(), String> {
    if !nss_has(location, name, env) {
        return Ok(());
    }
    env.run_ok("certutil", &["-D", "-d", location, "-n", name])
}

fn nss_install(ca: &LocalCa, env: &TrustEnv, records: &mut Records, report: &mut Report) {
    if env.home.is_none() {
        report.outcomes.push(Outcome::Failed("Chrome/Firefox (NSS)".into(), "no home directory".into()));
        return;
    }
    if !env.commands.exists("certutil") {
        report.outcomes.push(Outcome::Failed("Chrome/Firefox (NSS)".into(), CERTUTIL_MISSING.into()));
        return;
    }
    let name = nickname(ca);
    let ca_path = ca.cert_path().display().to_string();
    for db in nss_databases(env) {
        let location = db.location();
        let store = describe(Kind::Nss, &location);
        let record =
            Record { kind: Kind::Nss, location: location.clone(), fingerprint: ca.fingerprint(), name: name.clone() };
        if nss_format(&db.dir).is_none() {
            // Chrome has not made its database yet: make it, so Chrome finds the CA when it starts.
            let created = fs::create_dir_all(&db.dir)
                .map_err(|error| format!("cannot create {}: {error}", db.dir.display()))
                .and_then(|()| env.run_ok("certutil", &["-N", "--empty-password", "-d", &location]));
            if let Err(reason) = created {
                report.outcomes.push(Outcome::Failed(store, reason));
                continue;
            }
        } else if nss_has(&location, &name, env) {
            records.upsert(record);
            report.outcomes.push(Outcome::AlreadyInstalled(store));
            continue;
        }
        match env.run_ok("certutil", &["-A", "-d", &location, "-t", "C,,", "-n", &name, "-i", &ca_path]) {
            Ok(()) => {
                records.upsert(record);
                report.outcomes.push(Outcome::Installed(store));
            }
            Err(reason) => report.outcomes.push(Outcome::Failed(store, reason)),
        }
    }
}

fn macos_install(ca: &LocalCa, env: &TrustEnv, records: &mut Records, report: &mut Report) {
    let Some(home) = &env.home else {
        report.outcomes.push(Outcome::Failed("the login keychain".into(), "no home directory".into()));
        return;
    };
    let keychain = home.join("Library/Keychains/login.keychain-db").display().to_string();
    let store = describe(Kind::Keychain, &keychain);
    let fingerprint = ca.fingerprint();
    if records.has(Kind::Keychain, &keychain, &fingerprint) {
        report.outcomes.push(Outcome::AlreadyInstalled(store));
        return;
    }
    let ca_path = ca.cert_path().display().to_string();
    match env.run_ok("security", &["add-trusted-cert", "-r", "trustRoot", "-k", &keychain, &ca_path]) {
        Ok(()) => {
            records.upsert(Record { kind: Kind::Keychain, location: keychain, fingerprint, name: ca.common_name() });
            report.outcomes.push(Outcome::Installed(store));
        }
        Err(reason) => report.outcomes.push(Outcome::Failed(store, reason)),
    }
}

fn windows_install(ca: &LocalCa, env: &TrustEnv, records: &mut Records, report: &mut Report) {
    let location = "CurrentUser\\Root".to_string();
    let store = describe(Kind::Windows, &location);
    let fingerprint = ca.fingerprint();
    if records.has(Kind::Windows, &location, &fingerprint) {
        report.outcomes.push(Outcome::AlreadyInstalled(store));
        return;
    }
    let ca_path = ca.cert_path().display().to_string();
    match env.run_ok("certutil", &["-user", "-addstore", "Root", &ca_path]) {
        Ok(()) => {
            records.upsert(Record { kind: Kind::Windows, location, fingerprint, name: ca.serial_hex() });
            report.outcomes.push(Outcome::Installed(store));
        }
        Err(reason) => report.outcomes.push(Outcome::Failed(store, reason)),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeSet;

    use super::*;

    /// Plays the programs: certutil keeps its databases in memory (and makes cert9.db files so
    /// that databases exist), install and rm touch the real (temporary) files.
    struct Fake {
        present: Vec<&'static str>,
        sudo_ok: bool,
        temp: PathBuf,
        calls: RefCell<Vec<String>>,
        nss: RefCell<BTreeSet<(String, String)>>,
    }

    impl Fake {
        fn new(temp: &Path, present: &[&'static str]) -> Fake {
            Fake {
                present: present.to_vec(),
                sudo_ok: true,
                temp: temp.to_path_buf(),
                calls: RefCell::default(),
                nss: RefCell::default(),
            }
        }

        fn take_calls(&self) -> Vec<String> {
            self.calls.take()
        }
    }

    fn ok(success: bool) -> std::io::Result<CommandOutput> {
        Ok(CommandOutput { success, stdout: String::new(), stderr: if success { "" } else { "no" }.into() })
    }

    impl Commands for Fake {
        fn exists(&self, program: &str) -> bool {
            self.present.contains(&program)
        }

        fn run(&self, program: &str, args: &[String]) -> std::io::Result<CommandOutput> {
            let temp = self.temp.display().to_string();
            let line = std::iter::once(program.to_string())
                .chain(args.iter().cloned())
                .collect::<Vec<_>>()
                .join(" ")
                .replace(&temp, "$T");
            self.calls.borrow_mut().push(line);
            assert!(self.exists(program), "{program} is not installed, yet it was run");
            let (program, args) = if program == "sudo" {
                assert_eq!(args[0], "-n", "sudo must never prompt");
                if args[1] == "true" {
                    return ok(self.sudo_ok);
                }
                (args[1].as_str(), &args[2..])
            } else {
                (program, args)
            };
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            match (program, args.as_slice()) {
                ("install", ["-m", "0644", from, to]) => ok(fs::copy(from, to).is_ok()),
                ("rm", ["-f", path]) => ok(fs::remove_file(path).is_ok()),
                ("update-ca-certificates" | "update-ca-trust", _) => ok(true),
                ("certutil", ["-N", "--empty-password", "-d", db]) => {
                    let dir = db.strip_prefix("sql:").unwrap();
                    ok(fs::write(Path::new(dir).join("cert9.db"), "").is_ok())
                }
                ("certutil", ["-L", "-d", db, "-n", name]) => {
                    ok(self.nss.borrow().contains(&(db.to_string(), name.to_string())))
                }
                ("certutil", ["-A", "-d", db, "-t", "C,,", "-n", name, "-i", _]) => {
                    ok(self.nss.borrow_mut().insert((db.to_string(), name.to_string())))
                }
                ("certutil", ["-D", "-d", db, "-n", name]) => {
                    ok(self.nss.borrow_mut().remove(&(db.to_string(), name.to_string())))
                }
                ("security" | "certutil", _) => ok(true),
                _ => panic!("unexpected command {program} {args:?}"),
            }
        }
    }

    struct Setup {
        temp: PathBuf,
        state: PathBuf,
        home: PathBuf,
        ca: LocalCa,
    }

    /// A temporary machine: a Debian anchors directory, a home with one Firefox profile, and a CA.
    fn setup(name: &str) -> Setup {
        let temp = std::env::temp_dir().join(format!("ory-proxy-trust-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&temp);
        fs::create_dir_all(temp.join("root").join(DEBIAN_ANCHORS)).unwrap();
        let home = temp.join("home");
        let profile = home.join(".mozilla/firefox/abcd.default-release");
        fs::create_dir_all(&profile).unwrap();
        fs::write(profile.join("cert9.db"), "").unwrap();
        fs::create_dir_all(home.join(".mozilla/firefox/Crash Reports")).unwrap(); // not a profile
        let state = temp.join("state");
        let ca = LocalCa::load_or_create(&state).unwrap();
        Setup { temp, state, home, ca }
    }

    fn env<'a>(setup: &Setup, os: Os, is_root: bool, commands: &'a Fake) -> TrustEnv<'a> {
        TrustEnv {
            os,
            home: Some(setup.home.clone()),
            root: setup.temp.join("root"),
            is_root,
            only: Vec::new(),
            commands,
        }
    }

    #[test]
    fn linux_installs_into_the_system_store_and_every_nss_database_once() {
        let s = setup("linux");
        let fake = Fake::new(&s.temp, &["sudo", "install", "update-ca-certificates", "certutil"]);
        let env = env(&s, Os::Linux, false, &fake);
        let nick = nickname(&s.ca);
        let report = install(&s.ca, &s.state, &env);

        let anchor = "$T/root/usr/local/share/ca-certificates/ory-proxy-local-ca.crt";
        let chrome = "sql:$T/home/.pki/nssdb";
        let firefox = "sql:$T/home/.mozilla/firefox/abcd.default-release";
        assert_eq!(
            fake.take_calls(),
            [
                "sudo -n true".to_string(),
                format!("sudo -n install -m 0644 $T/state/ca.pem {anchor}"),
                "sudo -n update-ca-certificates".to_string(),
                format!("certutil -N --empty-password -d {chrome}"),
                format!("certutil -A -d {chrome} -t C,, -n {nick} -i $T/state/ca.pem"),
                format!("certutil -L -d {firefox} -n {nick}"),
                format!("certutil -A -d {firefox} -t C,, -n {nick} -i $T/state/ca.pem"),
            ]
        );
        assert_eq!(report.failures().count(), 0, "{report}");
        assert_eq!(report.outcomes.iter().filter(|o| matches!(o, Outcome::Installed(_))).count(), 3, "{report}");
        let anchor_path = s.temp.join("root").join(DEBIAN_ANCHORS).join(DEBIAN_FILE);
        assert_eq!(fs::read_to_string(&anchor_path).unwrap(), s.ca.cert_pem());

        let records: Records = serde_json::from_str(&fs::read_to_string(s.state.join(TRUST_FILE)).unwrap()).unwrap();
        assert_eq!(records.installed.len(), 3);
        assert!(records.installed.iter().all(|r| r.fingerprint == s.ca.fingerprint()));

        // Again: everything is found in place, nothing is installed twice, sudo is not asked.
        let report = install(&s.ca, &s.state, &env);
        assert_eq!(
            fake.take_calls(),
            [format!("certutil -L -d {chrome} -n {nick}"), format!("certutil -L -d {firefox} -n {nick}"),]
        );
        assert!(report.outcomes.iter().all(|o| matches!(o, Outcome::AlreadyInstalled(_))), "{report}");
        assert_eq!(report.outcomes.len(), 3);

        // And out again, from everywhere.
        let report = uninstall(Some(&s.ca), &s.state, &env);
        assert_eq!(
            fake.take_calls(),
            [
                "sudo -n true".to_string(),
                format!("sudo -n rm -f {anchor}"),
                "sudo -n update-ca-certificates".to_string(),
                format!("certutil -L -d {chrome} -n {nick}"),
                format!("certutil -D -d {chrome} -n {nick}"),
                format!("certutil -L -d {firefox} -n {nick}"),
                format!("certutil -D -d {firefox} -n {nick}"),
            ]
        );
        assert_eq!(report.outcomes.iter().filter(|o| matches!(o, Outcome::Removed(_))).count(), 3, "{report}");
        assert!(!anchor_path.exists());
        assert!(fake.nss.borrow().is_empty());
        let records: Records = serde_json::from_str(&fs::read_to_string(s.state.join(TRUST_FILE)).unwrap()).unwrap();
        assert!(records.installed.is_empty());
        fs::remove_dir_all(&s.temp).unwrap();
    }

    #[test]
    fn root_needs_no_sudo_and_fedora_uses_update_ca_trust() {
        let s = setup("fedora");
        fs::remove_dir_all(s.temp.join("root").join(DEBIAN_ANCHORS)).unwrap();
        fs::create_dir_all(s.temp.join("root").join(FEDORA_ANCHORS)).unwrap();
        let fake = Fake::new(&s.temp, &["install", "update-ca-trust"]);
        let env = TrustEnv { only: vec![Kind::System], ..env(&s, Os::Linux, true, &fake) };
        let report = install(&s.ca, &s.state, &env);
        assert_eq!(
            fake.take_calls(),
            [
                "install -m 0644 $T/state/ca.pem $T/root/etc/pki/ca-trust/source/anchors/ory-proxy-local-ca.pem",
                "update-ca-trust extract",
            ]
        );
        assert_eq!(report.outcomes.len(), 1, "only the system store was asked for: {report}");
        fs::remove_dir_all(&s.temp).unwrap();
    }

    #[test]
    fn what_cannot_be_done_is_said_with_what_to_do() {
        let s = setup("failures");
        let mut fake = Fake::new(&s.temp, &["sudo", "update-ca-certificates"]);
        fake.sudo_ok = false;
        let env = env(&s, Os::Linux, false, &fake);
        let report = install(&s.ca, &s.state, &env);
        // sudo is asked whether it would prompt; nothing else runs.
        assert_eq!(fake.take_calls(), ["sudo -n true"]);
        let failures: Vec<(&str, &str)> = report.failures().collect();
        assert_eq!(failures.len(), 2, "{report}");
        assert!(failures[0].1.contains("sudo would ask for a password"), "{report}");
        assert!(failures[0].1.contains("sudo update-ca-certificates"), "{report}");
        assert!(failures[1].1.contains("install libnss3-tools (Debian/Ubuntu) or nss-tools (Fedora)"), "{report}");
        assert!(report.to_string().contains("NOT trusted by"), "{report}");
        assert!(!s.temp.join("root").join(DEBIAN_ANCHORS).join(DEBIAN_FILE).exists());

        // No known system store at all.
        fs::remove_dir_all(s.temp.join("root").join(DEBIAN_ANCHORS)).unwrap();
        let report = install(&s.ca, &s.state, &TrustEnv { only: vec![Kind::System], ..env });
        assert!(report.failures().next().unwrap().1.contains("update-ca-certificates"), "{report}");
        fs::remove_dir_all(&s.temp).unwrap();
    }

    #[test]
    fn macos_and_windows_use_their_own_stores_once() {
        let s = setup("other-os");
        let fake = Fake::new(&s.temp, &["security", "certutil"]);
        let mac = env(&s, Os::MacOs, false, &fake);
        install(&s.ca, &s.state, &mac);
        assert_eq!(
            fake.take_calls(),
            ["security add-trusted-cert -r trustRoot -k $T/home/Library/Keychains/login.keychain-db $T/state/ca.pem"]
        );
        let report = install(&s.ca, &s.state, &mac);
        assert!(fake.take_calls().is_empty());
        assert!(matches!(report.outcomes[..], [Outcome::AlreadyInstalled(_)]), "{report}");

        let windows = env(&s, Os::Windows, false, &fake);
        install(&s.ca, &s.state, &windows);
        assert_eq!(fake.take_calls(), ["certutil -user -addstore Root $T/state/ca.pem"]);

        uninstall(Some(&s.ca), &s.state, &windows);
        assert_eq!(
            fake.take_calls(),
            [
                format!(
                    "security delete-certificate -c {} $T/home/Library/Keychains/login.keychain-db",
                    s.ca.common_name()
                ),
                format!("certutil -user -delstore Root {}", s.ca.serial_hex()),
            ]
        );
        assert!(s.ca.common_name().starts_with("ory-proxy local CA ("));
        fs::remove_dir_all(&s.temp).unwrap();
    }

    /// The real certutil, in a temporary HOME: the CA lands in Chrome's database (made for the
    /// occasion) and in a Firefox profile, with the trust flags that make it a TLS root.
    /// `make test` installs certutil (libnss3-tools) first.
    #[test]
    fn real_certutil_trusts_the_ca_in_a_temporary_home() {
        assert!(
            SystemCommands.exists("certutil"),
            "certutil is missing: `make setup-browser` installs libnss3-tools (or install it yourself)"
        );
        let s = setup("real");
        let profile = s.home.join(".mozilla/firefox/abcd.default-release");
        fs::remove_file(profile.join("cert9.db")).unwrap();
        let commands = SystemCommands;
        let list = |db: &Path| {
            let output =
                commands.run("certutil", &["-L".into(), "-d".into(), format!("sql:{}", db.display())]).unwrap();
            assert!(output.success, "{}", output.stderr);
            output.stdout
        };
        let made = commands
            .run(
                "certutil",
                &["-N".into(), "--empty-password".into(), "-d".into(), format!("sql:{}", profile.display())],
            )
            .unwrap();
        assert!(made.success, "{}", made.stderr);

        let env = TrustEnv {
            os: Os::Linux,
            home: Some(s.home.clone()),
            root: s.temp.join("root"),
            is_root: false,
            only: vec![Kind::Nss],
            commands: &commands,
        };
        let report = install(&s.ca, &s.state, &env);
        assert_eq!(report.failures().count(), 0, "{report}");
        assert_eq!(report.outcomes.iter().filter(|o| matches!(o, Outcome::Installed(_))).count(), 2, "{report}");
        let nick = nickname(&s.ca);
        for db in [s.home.join(".pki/nssdb"), profile.clone()] {
            let listed = list(&db);
            let line = listed.lines().find(|l| l.starts_with(&nick)).unwrap_or_else(|| panic!("{listed}"));
            assert!(line.trim_end().ends_with("C,,"), "{line}");
        }
        // The database holds exactly our certificate.
        let exported = commands
            .run(
                "certutil",
                &[
                    "-L".into(),
                    "-d".into(),
                    format!("sql:{}", s.home.join(".pki/nssdb").display()),
                    "-n".into(),
                    nick.clone(),
                    "-a".into(),
                ],
            )
            .unwrap();
        let normalise = |pem: &str| pem.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("\n");
        assert_eq!(normalise(&exported.stdout), normalise(s.ca.cert_pem()));

        let again = install(&s.ca, &s.state, &env);
        assert!(again.outcomes.iter().all(|o| matches!(o, Outcome::AlreadyInstalled(_))), "{again}");

        let removed = uninstall(Some(&s.ca), &s.state, &env);
        assert_eq!(removed.outcomes.iter().filter(|o| matches!(o, Outcome::Removed(_))).count(), 2, "{removed}");
        for db in [s.home.join(".pki/nssdb"), profile] {
            assert!(!list(&db).contains(&nick));
        }
        fs::remove_dir_all(&s.temp).unwrap();
    }
}
