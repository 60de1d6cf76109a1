//! HTTPS for `ory-proxy local`: a persistent local certificate authority (kept in
//! `$ORY_PROXY_HOME`, like mkcert's), a short-lived serving certificate it issues at every start,
//! and the rustls configuration that serves it.
//!
//! The CA is made once, so that trusting it once (see [`crate::trust`]) is enough: browsers keep
//! trusting the proxy across restarts. Its key never leaves `$ORY_PROXY_HOME` (mode 0600).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;

use crate::home;

/// The CA certificate (public: this is what trust stores get).
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA's private key (0600).
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// How long the CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a serving certificate is valid. It is made at every start, so short is free.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// Certificates start a little in the past, for clocks that disagree.
const BACKDATE: Duration = Duration::from_secs(3600);

/// The local certificate authority.
pub struct LocalCa {
    dir: PathBuf,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    created: bool,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa").field("cert", &self.cert_path()).field("fingerprint", &self.fingerprint()).finish()
    }
}

/// A serving certificate and its key.
pub struct Leaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl LocalCa {
    /// The CA kept in `home`, made on first use. A damaged or mismatched file is an error that
    /// names it; nothing is overwritten.
    pub fn load_or_create(home: &Path) -> anyhow::Result<LocalCa> {
        let cert_path = home.join(CA_CERT_FILE);
        let key_path = home.join(CA_KEY_FILE);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => LocalCa::load(home),
            (false, false) => LocalCa::create(home),
            (true, false) => bail!(
                "{} exists but its key {} is missing: delete {} to make a new CA (and trust it again)",
                cert_path.display(),
                key_path.display(),
                cert_path.display()
            ),
            (false, true) => bail!(
                "{} exists but its certificate {} is missing: delete {} to make a new CA (and trust it again)",
                key_path.display(),
                cert_path.display(),
                key_path.display()
            ),
        }
    }

    fn load(home: &Path) -> anyhow::Result<LocalCa> {
        let cert_path = home.join(CA_CERT_FILE);
        let key_path = home.join(CA_KEY_FILE);
        let damaged = |path: &Path, reason: &dyn std::fmt::Display| {
            anyhow::anyhow!(
                "{} is damaged ({reason}): delete {} and {} to make a new CA (and trust it again)",
                path.display(),
                cert_path.display(),
                key_path.display()
            )
        };
        let cert_pem = fs::read_to_string(&cert_path).with_context(|| format!("reading {}", cert_path.display()))?;
        let key_pem = fs::read_to_string(&key_path).with_context(|| format!("reading {}", key_path.display()))?;
        let cert_der = pem_certificate(&cert_pem).map_err(|reason| damaged(&cert_path, &reason))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|reason| damaged(&key_path, &reason))?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(&cert_der).map_err(|reason| damaged(&cert_path, &reason))?;
        if !parsed.is_ca() {
            return Err(damaged(&cert_path, &"it is not a CA certificate"));
        }
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(damaged(&key_path, &format_args!("it is not the key of {}", cert_path.display())));
        }
        let not_after = parsed.validity().not_after.timestamp();
        if not_after < OffsetDateTime::now_utc().unix_timestamp() + LEAF_VALIDITY.as_secs() as i64 {
            bail!(
                "the local CA {} expires soon or has expired: delete {} and {} to make a new one (and trust it again)",
                cert_path.display(),
                cert_path.display(),
                key_path.display()
            );
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(|reason| damaged(&cert_path, &reason))?;
        Ok(LocalCa { dir: home.to_path_buf(), cert_pem, cert_der, issuer, created: false })
    }

    fn create(home: &Path) -> anyhow::Result<LocalCa> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("generating the CA key")?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "ory-proxy local development CA");
        name.push(DnType::CommonName, format!("ory-proxy local CA ({})", user_at_host()));
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key).context("making the CA certificate")?;
        let cert_pem = cert.pem();
        // The key first: a certificate without its key would be a damaged CA.
        home::write_private(&home.join(CA_KEY_FILE), key.serialize_pem().as_bytes())?;
        write_public(&home.join(CA_CERT_FILE), cert_pem.as_bytes())?;
        let cert_der = cert.der().clone();
        let issuer = Issuer::new(params, key);
        Ok(LocalCa { dir: home.to_path_buf(), cert_pem, cert_der, issuer, created: true })
    }

    /// Whether this run made the CA (rather than finding it).
    pub fn created(&self) -> bool {
        self.created
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CA_CERT_FILE)
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.join(CA_KEY_FILE)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// SHA-256 of the certificate, lower-case hex: how trust stores are told apart.
    pub fn fingerprint(&self) -> String {
        hex(&Sha256::digest(self.cert_der.as_ref()))
    }

    /// The CA's common name, e.g. `ory-proxy local CA (ada@laptop)`.
    pub fn common_name(&self) -> String {
        x509_parser::parse_x509_certificate(&self.cert_der)
            .ok()
            .and_then(|(_, cert)| {
                cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(String::from)
            })
            .unwrap_or_default()
    }

    /// The CA's serial number in hex, as Windows' certutil names certificates.
    pub fn serial_hex(&self) -> String {
        x509_parser::parse_x509_certificate(&self.cert_der).map(|(_, cert)| hex(cert.raw_serial())).unwrap_or_default()
    }

    /// A serving certificate for `names` (DNS names or IP addresses), valid for `validity`.
    pub fn issue(&self, names: &[String], validity: Duration) -> anyhow::Result<Leaf> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("generating the serving key")?;
        let mut params = CertificateParams::new(names.to_vec()).context("the certificate's names")?;
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "ory-proxy local development certificate");
        name.push(DnType::CommonName, names.first().map(String::as_str).unwrap_or("localhost"));
        params.distinguished_name = name;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + validity;
        params.serial_number = Some(random_serial()?);
        let cert = params.signed_by(&key, &self.issuer).context("issuing the serving certificate")?;
        Ok(Leaf {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }

    /// The rustls configuration that serves a fresh certificate for `names`, speaking HTTP/2 and
    /// HTTP/1.1 (ALPN).
    pub fn server_config(&self, names: &[String]) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let leaf = self.issue(names, LEAF_VALIDITY)?;
        server_config(leaf)
    }
}

/// The rustls configuration for a certificate and key: ring, TLS 1.2 and 1.3, ALPN h2 and
/// http/1.1.
pub fn server_config(leaf: Leaf) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(leaf.chain, leaf.key)
        .context("the serving certificate")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The one certificate in a PEM text.
fn pem_certificate(text: &str) -> Result<CertificateDer<'static>, String> {
    use rustls::pki_types::pem::PemObject as _;
    let mut certificates = CertificateDer::pem_slice_iter(text.as_bytes());
    match certificates.next() {
        Some(Ok(der)) => Ok(der),
        Some(Err(error)) => Err(format!("not a PEM certificate: {error}")),
        None => Err("no PEM certificate in it".into()),
    }
}

/// Writes a public file (the CA certificate), readable by everyone.
fn write_public(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let temporary = path.with_extension("tmp");
    fs::write(&temporary, contents).with_context(|| format!("writing {}", temporary.display()))?;
    fs::rename(&temporary, path).with_context(|| format!("moving the new file to {}", path.display()))?;
    Ok(())
}

fn random_serial() -> anyhow::Result<SerialNumber> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for a serial number: {e}"))?;
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and of full length
    Ok(SerialNumber::from_slice(&bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `user@host`, to tell CAs of different machines apart in a trust store.
fn user_at_host() -> String {
    let user = ["USER", "USERNAME", "LOGNAME"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "user".into());
    let host = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| fs::read_to_string(path).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()))
        .or_else(|| {
            ["HOSTNAME", "COMPUTERNAME"].iter().find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        })
        .unwrap_or_else(|| "this machine".into());
    format!("{user}@{host}")
}

#[cfg(test)]
mod tests {
    use rustls::client::danger::ServerCertVerifier as _;
    use rustls::pki_types::{ServerName, UnixTime};

    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ory-proxy-tls-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn names() -> Vec<String> {
        ["localhost", "127.0.0.1", "::1", "dev.example"].map(String::from).to_vec()
    }

    fn verify(ca: &LocalCa, leaf: &Leaf, name: &str) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
        let server_name = ServerName::try_from(name.to_string()).unwrap();
        verifier.verify_server_cert(&leaf.chain[0], &[], &server_name, &[], UnixTime::now()).map(|_| ())
    }

    #[test]
    fn the_ca_is_made_once_private_and_reused() {
        let dir = temp_dir("reuse");
        let first = LocalCa::load_or_create(&dir).unwrap();
        assert!(first.created());
        let key = fs::read(dir.join(CA_KEY_FILE)).unwrap();
        let second = LocalCa::load_or_create(&dir).unwrap();
        assert!(!second.created());
        assert_eq!(first.cert_der(), second.cert_der());
        assert_eq!(first.cert_pem(), fs::read_to_string(dir.join(CA_CERT_FILE)).unwrap());
        assert_eq!(fs::read(dir.join(CA_KEY_FILE)).unwrap(), key, "the key is not rewritten");
        assert_eq!(first.fingerprint(), second.fingerprint());
        assert_eq!(first.fingerprint().len(), 64);
        // A certificate issued after the reload still chains to the first CA.
        let leaf = second.issue(&names(), LEAF_VALIDITY).unwrap();
        verify(&first, &leaf, "localhost").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(dir.join(CA_KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the CA key is the owner's only");
        }
        let (_, parsed) = x509_parser::parse_x509_certificate(first.cert_der()).unwrap();
        assert!(parsed.is_ca());
        let subject = parsed.subject().to_string();
        assert!(subject.contains("ory-proxy local CA ("), "{subject}");
        let years = (parsed.validity().not_after.timestamp() - parsed.validity().not_before.timestamp()) / 86400 / 365;
        assert_eq!(years, 10);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_leaf_verifies_against_the_ca_for_every_name_and_no_other() {
        let dir = temp_dir("leaf");
        let ca = LocalCa::load_or_create(&dir).unwrap();
        let leaf = ca.issue(&names(), LEAF_VALIDITY).unwrap();
        for name in ["localhost", "127.0.0.1", "::1", "dev.example"] {
            verify(&ca, &leaf, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(verify(&ca, &leaf, "example.com").is_err());
        assert!(verify(&ca, &leaf, "10.0.0.1").is_err());

        // IP addresses are IP SANs, names are DNS SANs.
        let (_, parsed) = x509_parser::parse_x509_certificate(&leaf.chain[0]).unwrap();
        let san = parsed.subject_alternative_name().unwrap().unwrap().value;
        let rendered: Vec<String> = san.general_names.iter().map(|n| format!("{n:?}")).collect();
        assert!(rendered.iter().any(|n| n.starts_with("DNSName(\"localhost\"")), "{rendered:?}");
        assert!(rendered.iter().any(|n| n == "IPAddress([127, 0, 0, 1])"), "{rendered:?}");
        assert!(!parsed.is_ca());
        let days = (parsed.validity().not_after.timestamp() - OffsetDateTime::now_utc().unix_timestamp()) / 86400;
        assert!((29..=30).contains(&days), "{days}");

        // Another CA's leaf does not verify.
        let other_dir = temp_dir("leaf-other");
        let other = LocalCa::load_or_create(&other_dir).unwrap();
        let foreign = other.issue(&names(), LEAF_VALIDITY).unwrap();
        assert!(verify(&ca, &foreign, "localhost").is_err());

        let config = ca.server_config(&names()).unwrap();
        assert_eq!(config.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_dir_all(&other_dir).unwrap();
    }

    #[test]
    fn damaged_files_are_named_and_left_alone() {
        let dir = temp_dir("damaged");
        LocalCa::load_or_create(&dir).unwrap();
        let cert = fs::read_to_string(dir.join(CA_CERT_FILE)).unwrap();

        fs::write(dir.join(CA_CERT_FILE), "garbage").unwrap();
        let error = LocalCa::load_or_create(&dir).unwrap_err().to_string();
        assert!(error.contains(CA_CERT_FILE) && error.contains("damaged"), "{error}");
        assert_eq!(fs::read_to_string(dir.join(CA_CERT_FILE)).unwrap(), "garbage");

        fs::write(dir.join(CA_CERT_FILE), &cert).unwrap();
        let key = fs::read_to_string(dir.join(CA_KEY_FILE)).unwrap();
        fs::write(dir.join(CA_KEY_FILE), "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
        let error = LocalCa::load_or_create(&dir).unwrap_err().to_string();
        assert!(error.contains(CA_KEY_FILE) && error.contains("damaged"), "{error}");

        // A valid key that is not the CA's.
        let stranger = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap().serialize_pem();
        fs::write(dir.join(CA_KEY_FILE), stranger).unwrap();
        let error = LocalCa::load_or_create(&dir).unwrap_err().to_string();
        assert!(error.contains("is not the key of"), "{error}");

        fs::write(dir.join(CA_KEY_FILE), &key).unwrap();
        assert!(LocalCa::load_or_create(&dir).is_ok());

        fs::remove_file(dir.join(CA_KEY_FILE)).unwrap();
        let error = LocalCa::load_or_create(&dir).unwrap_err().to_string();
        assert!(error.contains("is missing"), "{error}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
