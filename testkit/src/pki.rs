//! A certificate authority minted for a test (feature `pki`): the TLS tests
//! of the vendor-bridge and the end-to-end ones sign their servers' and
//! clients' certificates, valid and expired, with it.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

pub use rcgen::ExtendedKeyUsagePurpose;

/// A certificate authority that signs certificates for the test.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// Its own certificate, PEM: what a peer is told to trust.
    pub pem: String,
}

impl Authority {
    /// A new self-signed authority named `name` (its subject CN).
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no subject names is valid");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("rcgen generates a key pair");
        let pem = params.self_signed(&key).expect("a CA signs itself").pem();
        Self {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A certificate and its key, both PEM, whose subject CN is `names[0]`
    /// and whose subjectAltName holds every name; `expired`: valid only in
    /// 2020.
    pub fn sign(&self, names: &[&str], usage: ExtendedKeyUsagePurpose, expired: bool) -> (String, String) {
        let mut params = CertificateParams::new(names.iter().map(|&n| n.to_owned()).collect::<Vec<_>>())
            .expect("the test's names are valid subjectAltNames");
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![usage];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("rcgen generates a key pair");
        let cert = params.signed_by(&key, &self.issuer).expect("the authority signs");
        (cert.pem(), key.serialize_pem())
    }
}
