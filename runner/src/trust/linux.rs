//! The Linux system anchors: the CA as a file among Debian's (`update-ca-certificates`) or
//! Fedora's (`update-ca-trust`) anchors, written as root (through `sudo -n` when not root).

use std::fs;
use std::path::{Path, PathBuf};

use super::{Kind, Os, Placed, Placement, Record, Records, TrustEnv, TrustStore};
use crate::tls::LocalCa;

/// Where the CA goes among Debian's system anchors.
pub const DEBIAN_ANCHORS: &str = "usr/local/share/ca-certificates";
pub const DEBIAN_FILE: &str = "ory-proxy-local-ca.crt";
/// Where the CA goes among Fedora's system anchors.
pub const FEDORA_ANCHORS: &str = "etc/pki/ca-trust/source/anchors";
pub const FEDORA_FILE: &str = "ory-proxy-local-ca.pem";

/// The Linux system anchors ory-proxy knows: directory, file name, refresh command.
const SYSTEM_STORES: [(&str, &str, &[&str]); 2] = [
    (DEBIAN_ANCHORS, DEBIAN_FILE, &["update-ca-certificates"]),
    (FEDORA_ANCHORS, FEDORA_FILE, &["update-ca-trust", "extract"]),
];

/// The system anchors.
pub(super) struct SystemAnchors;

impl TrustStore for SystemAnchors {
    fn kind(&self) -> Kind {
        Kind::System
    }

    fn os(&self) -> Os {
        Os::Linux
    }

    fn describe(&self, location: &str) -> String {
        format!("the system store ({location})")
    }

    fn install(&self, ca: &LocalCa, env: &TrustEnv, _: &Records) -> Vec<Placement> {
        let Some((path, refresh)) = linux_system_store(env) else {
            let reason = "neither update-ca-certificates (Debian/Ubuntu) nor update-ca-trust (Fedora) found";
            return vec![("the system store".into(), Err(reason.into()))];
        };
        let location = path.display().to_string();
        let store = self.describe(&location);
        let record = Record {
            kind: Kind::System,
            location: location.clone(),
            fingerprint: ca.fingerprint(),
            name: String::new(),
        };
        if holds(&path, ca) {
            return vec![(store, Ok(Placed::Found(record)))];
        }
        let ca_path = ca.cert_path().display().to_string();
        let result = as_root(env).and_then(|prefix| {
            run_as_root(env, &prefix, "install", &["-m", "0644", &ca_path, &location])?;
            run_as_root(env, &prefix, refresh[0], &refresh[1..])
        });
        let result = result.map(|()| Placed::Now(record)).map_err(|reason| {
            format!(
                "{reason}; to trust it system-wide run: sudo install -m 0644 {ca_path} {location} && sudo {}",
                refresh.join(" ")
            )
        });
        vec![(store, result)]
    }

    fn remove(&self, record: &Record, env: &TrustEnv) -> Result<(), String> {
        system_remove(Path::new(&record.location), env)
    }

    fn check(&self, ca: &LocalCa, env: &TrustEnv, _: &Records) -> Vec<Placement<()>> {
        let Some((path, _)) = linux_system_store(env) else {
            let reason = "neither update-ca-certificates (Debian/Ubuntu) nor update-ca-trust (Fedora) found";
            return vec![("the system store".into(), Err(reason.into()))];
        };
        let trusted = if holds(&path, ca) { Ok(()) } else { Err("it is not among the anchors".into()) };
        vec![(self.describe(&path.display().to_string()), trusted)]
    }

    /// Every known anchor file that holds this very CA.
    fn remove_unrecorded(&self, ca: &LocalCa, env: &TrustEnv, handled: &dyn Fn(&str) -> bool) -> Vec<Placement<()>> {
        let mut removed = Vec::new();
        for (anchors, file, _) in SYSTEM_STORES {
            let path = env.root.join(anchors).join(file);
            let store = self.describe(&path.display().to_string());
            if !handled(&store) && holds(&path, ca) {
                removed.push((store, system_remove(&path, env)));
            }
        }
        removed
    }
}

/// Whether the anchor file at `path` is this CA.
fn holds(path: &Path, ca: &LocalCa) -> bool {
    fs::read(path).is_ok_and(|bytes| bytes == ca.cert_pem().as_bytes())
}

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
