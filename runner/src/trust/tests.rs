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
    TrustEnv { os, home: Some(setup.home.clone()), root: setup.temp.join("root"), is_root, only: Vec::new(), commands }
}

/// The places of [`setup`]'s machine as the calls name them: the Debian anchor, Chrome's NSS
/// database and the Firefox profile's.
const LINUX_PLACES: (&str, &str, &str) = (
    "$T/root/usr/local/share/ca-certificates/ory-proxy-local-ca.crt",
    "sql:$T/home/.pki/nssdb",
    "sql:$T/home/.mozilla/firefox/abcd.default-release",
);

#[test]
fn linux_installs_into_the_system_store_and_every_nss_database_once() {
    let s = setup("linux");
    let fake = Fake::new(&s.temp, &["sudo", "install", "update-ca-certificates", "certutil"]);
    let env = env(&s, Os::Linux, false, &fake);
    let nick = nickname(&s.ca);
    let report = install(&s.ca, &s.state, &env);

    let (anchor, chrome, firefox) = LINUX_PLACES;
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
        let output = commands.run("certutil", &["-L".into(), "-d".into(), format!("sql:{}", db.display())]).unwrap();
        assert!(output.success, "{}", output.stderr);
        output.stdout
    };
    let made = commands
        .run("certutil", &["-N".into(), "--empty-password".into(), "-d".into(), format!("sql:{}", profile.display())])
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

#[test]
fn uninstall_finds_the_ca_on_linux_without_a_record() {
    let s = setup("unrecorded");
    let fake = Fake::new(&s.temp, &["sudo", "install", "update-ca-certificates", "certutil"]);
    let env = env(&s, Os::Linux, false, &fake);
    let nick = nickname(&s.ca);
    install(&s.ca, &s.state, &env);
    fake.take_calls();
    fs::remove_file(s.state.join(TRUST_FILE)).unwrap();

    let report = uninstall(Some(&s.ca), &s.state, &env);
    let (anchor, chrome, firefox) = LINUX_PLACES;
    assert_eq!(
        fake.take_calls(),
        [
            "sudo -n true".to_string(),
            format!("sudo -n rm -f {anchor}"),
            "sudo -n update-ca-certificates".to_string(),
            format!("certutil -L -d {chrome} -n {nick}"),
            format!("certutil -L -d {chrome} -n {nick}"),
            format!("certutil -D -d {chrome} -n {nick}"),
            format!("certutil -L -d {firefox} -n {nick}"),
            format!("certutil -L -d {firefox} -n {nick}"),
            format!("certutil -D -d {firefox} -n {nick}"),
        ]
    );
    let removed: Vec<&Outcome> = report.outcomes.iter().collect();
    assert_eq!(
        removed,
        [
            &Outcome::Removed(format!(
                "the system store ({})",
                s.temp.join("root").join(DEBIAN_ANCHORS).join(DEBIAN_FILE).display()
            )),
            &Outcome::Removed(format!("NSS database sql:{}", s.home.join(".pki/nssdb").display())),
            &Outcome::Removed(format!(
                "NSS database sql:{}",
                s.home.join(".mozilla/firefox/abcd.default-release").display()
            )),
        ],
        "{report}"
    );
    // Without the CA, only the record is used: there is none, so nothing is done.
    let report = uninstall(None, &s.state, &env);
    assert!(report.outcomes.is_empty() && fake.take_calls().is_empty(), "{report}");
    fs::remove_dir_all(&s.temp).unwrap();
}
