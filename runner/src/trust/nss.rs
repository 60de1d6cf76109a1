//! NSS databases, where Chrome and Firefox on Linux look: Chrome's `~/.pki/nssdb` (made when
//! missing), snap's Chromium and every Firefox profile (also snap and flatpak ones), with
//! `certutil`.

use std::fs;
use std::path::{Path, PathBuf};

use super::{Kind, Os, Placed, Placement, Record, Records, TrustEnv, TrustStore};
use crate::tls::LocalCa;

const CERTUTIL_MISSING: &str =
    "certutil not found: install libnss3-tools (Debian/Ubuntu) or nss-tools (Fedora) to trust it in Chrome/Firefox";

/// The NSS nickname of `ca`: one per CA, so CAs of different `$ORY_PROXY_HOME`s do not collide.
pub fn nickname(ca: &LocalCa) -> String {
    format!("ory-proxy local CA {}", &ca.fingerprint()[..16])
}

/// Every NSS database of the user.
pub(super) struct Nss;

impl TrustStore for Nss {
    fn kind(&self) -> Kind {
        Kind::Nss
    }

    fn os(&self) -> Os {
        Os::Linux
    }

    fn describe(&self, location: &str) -> String {
        format!("NSS database {location}")
    }

    fn install(&self, ca: &LocalCa, env: &TrustEnv, _: &Records) -> Vec<Placement> {
        if env.home.is_none() {
            return vec![("Chrome/Firefox (NSS)".into(), Err("no home directory".into()))];
        }
        if !env.commands.exists("certutil") {
            return vec![("Chrome/Firefox (NSS)".into(), Err(CERTUTIL_MISSING.into()))];
        }
        let name = nickname(ca);
        let ca_path = ca.cert_path().display().to_string();
        let mut placements = Vec::new();
        for db in nss_databases(env) {
            let location = db.location();
            let store = self.describe(&location);
            let record = Record {
                kind: Kind::Nss,
                location: location.clone(),
                fingerprint: ca.fingerprint(),
                name: name.clone(),
            };
            if nss_format(&db.dir).is_none() {
                // Chrome has not made its database yet: make it, so Chrome finds the CA when it starts.
                let created = fs::create_dir_all(&db.dir)
                    .map_err(|error| format!("cannot create {}: {error}", db.dir.display()))
                    .and_then(|()| env.run_ok("certutil", &["-N", "--empty-password", "-d", &location]));
                if let Err(reason) = created {
                    placements.push((store, Err(reason)));
                    continue;
                }
            } else if nss_has(&location, &name, env) {
                placements.push((store, Ok(Placed::Found(record))));
                continue;
            }
            let added = env.run_ok("certutil", &["-A", "-d", &location, "-t", "C,,", "-n", &name, "-i", &ca_path]);
            placements.push((store, added.map(|()| Placed::Now(record))));
        }
        placements
    }

    fn remove(&self, record: &Record, env: &TrustEnv) -> Result<(), String> {
        nss_remove(&record.location, &record.name, env)
    }

    fn check(&self, ca: &LocalCa, env: &TrustEnv, _: &Records) -> Vec<Placement<()>> {
        if !env.commands.exists("certutil") {
            return vec![("Chrome/Firefox (NSS)".into(), Err(CERTUTIL_MISSING.into()))];
        }
        let name = nickname(ca);
        nss_databases(env)
            .into_iter()
            .map(|db| {
                let location = db.location();
                let trusted = if nss_format(&db.dir).is_none() {
                    Err("there is no database yet".into())
                } else if nss_has(&location, &name, env) {
                    Ok(())
                } else {
                    Err("it is not in the database".into())
                };
                (self.describe(&location), trusted)
            })
            .collect()
    }

    /// Every database that has this CA's nickname.
    fn remove_unrecorded(&self, ca: &LocalCa, env: &TrustEnv, handled: &dyn Fn(&str) -> bool) -> Vec<Placement<()>> {
        if !env.commands.exists("certutil") {
            return Vec::new();
        }
        let name = nickname(ca);
        let mut removed = Vec::new();
        for db in nss_databases(env) {
            let location = db.location();
            let store = self.describe(&location);
            if !handled(&store) && nss_has(&location, &name, env) {
                removed.push((store, nss_remove(&location, &name, env)));
            }
        }
        removed
    }
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
