//! The Windows user ROOT store (`certutil -user -addstore Root`). The store is not asked whether
//! it has the CA: the record says so.

use super::{Kind, Os, Placement, Record, Records, TrustEnv, TrustStore, put_unless_recorded};
use crate::tls::LocalCa;

/// The user's ROOT store.
pub(super) struct RootStore;

impl TrustStore for RootStore {
    fn kind(&self) -> Kind {
        Kind::Windows
    }

    fn os(&self) -> Os {
        Os::Windows
    }

    fn describe(&self, _: &str) -> String {
        "the Windows user ROOT store".to_string()
    }

    fn install(&self, ca: &LocalCa, env: &TrustEnv, records: &Records) -> Vec<Placement> {
        let location = "CurrentUser\\Root".to_string();
        let record = Record { kind: Kind::Windows, location, fingerprint: ca.fingerprint(), name: ca.serial_hex() };
        let ca_path = ca.cert_path().display().to_string();
        let store = self.describe(&record.location);
        vec![(
            store,
            put_unless_recorded(record, records, || env.run_ok("certutil", &["-user", "-addstore", "Root", &ca_path])),
        )]
    }

    fn remove(&self, record: &Record, env: &TrustEnv) -> Result<(), String> {
        env.run_ok("certutil", &["-user", "-delstore", "Root", &record.name])
    }
}
