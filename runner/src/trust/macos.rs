//! The macOS login keychain (`security add-trusted-cert`). The keychain is not asked whether it
//! has the CA: the record says so.

use super::{Kind, Os, Placement, Record, Records, TrustEnv, TrustStore, put_unless_recorded};
use crate::tls::LocalCa;

/// The login keychain.
pub(super) struct Keychain;

impl TrustStore for Keychain {
    fn kind(&self) -> Kind {
        Kind::Keychain
    }

    fn os(&self) -> Os {
        Os::MacOs
    }

    fn describe(&self, location: &str) -> String {
        format!("the keychain {location}")
    }

    fn install(&self, ca: &LocalCa, env: &TrustEnv, records: &Records) -> Vec<Placement> {
        let Some(home) = &env.home else {
            return vec![("the login keychain".into(), Err("no home directory".into()))];
        };
        let keychain = home.join("Library/Keychains/login.keychain-db").display().to_string();
        let record = Record {
            kind: Kind::Keychain,
            location: keychain.clone(),
            fingerprint: ca.fingerprint(),
            name: ca.common_name(),
        };
        let ca_path = ca.cert_path().display().to_string();
        let placed = put_unless_recorded(record, records, || {
            env.run_ok("security", &["add-trusted-cert", "-r", "trustRoot", "-k", &keychain, &ca_path])
        });
        vec![(self.describe(&keychain), placed)]
    }

    fn remove(&self, record: &Record, env: &TrustEnv) -> Result<(), String> {
        env.run_ok("security", &["delete-certificate", "-c", &record.name, &record.location])
    }
}
