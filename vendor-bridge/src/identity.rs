//! Which driver a caller may act as. With mutual TLS (`BRIDGE_TLS_CLIENT_CA`)
//! a driver's certificate names it: every `driver_id` in a call (a stream's
//! `hello`, each session of `OpenSession(s)` / `CloseSession(s)`,
//! `RejectCommand`, `RecordUpload`) must be the certificate's subject common
//! name (CN) or one of the DNS names of its subjectAltName, or the call is
//! refused with `PERMISSION_DENIED` before anything is read or written.
//! Without mutual TLS nothing names a driver: a bearer token, shared by
//! the whole fleet, proves only that the caller is one of the drivers.

use tonic::{Request, Status};
use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};

/// The driver ids one caller may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    /// No client certificates (plaintext, a token, or TLS without client
    /// certificates): any driver id.
    AnyDriver,
    /// The names of the caller's certificate: only these.
    Certified(Vec<String>),
}

impl Caller {
    /// Who sent `request`: with `mutual_tls`, the names of its leaf
    /// certificate (a request without one, which the TLS handshake rules
    /// out, may act as nobody).
    pub(crate) fn of<T>(request: &Request<T>, mutual_tls: bool) -> Self {
        if !mutual_tls {
            return Self::AnyDriver;
        }
        let names = request
            .peer_certs()
            .and_then(|chain| chain.first().map(|leaf| certificate_names(leaf.as_ref())))
            .unwrap_or_default();
        Self::Certified(names)
    }

    /// `Ok` if the caller may act as `driver_id`; else `PERMISSION_DENIED`.
    pub(crate) fn may_act_as(&self, driver_id: &str) -> Result<(), Status> {
        match self {
            Self::AnyDriver => Ok(()),
            Self::Certified(names) if names.iter().any(|name| name == driver_id) => Ok(()),
            Self::Certified(names) => Err(Status::permission_denied(format!(
                "driver_id {:?} is not a name of the client certificate (subject CN or DNS subjectAltName: {names:?})",
                driver_id.chars().take(128).collect::<String>()
            ))),
        }
    }
}

/// The subject CNs and subjectAltName DNS names of a DER certificate;
/// none if it does not parse.
pub(crate) fn certificate_names(der: &[u8]) -> Vec<String> {
    let Ok((_, certificate)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = certificate
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .map(str::to_owned)
        .collect();
    if let Ok(Some(alternative)) = certificate.subject_alternative_name() {
        for name in &alternative.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push((*dns).to_owned());
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_mutual_tls_anyone_may_act_as_any_driver() {
        assert!(Caller::AnyDriver.may_act_as("driver-1").is_ok());
    }

    #[test]
    fn a_certified_caller_may_act_only_as_its_names() {
        let caller = Caller::Certified(vec!["driver-1".to_owned(), "driver-1.internal".to_owned()]);
        assert!(caller.may_act_as("driver-1").is_ok());
        assert!(caller.may_act_as("driver-1.internal").is_ok());
        let denied = caller.may_act_as("driver-2").unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(Caller::Certified(Vec::new()).may_act_as("").is_err());
    }

    fn certificate(common_name: Option<&str>, alternative_names: &[&str]) -> Vec<u8> {
        let names = alternative_names
            .iter()
            .map(|&name| name.to_owned())
            .collect::<Vec<_>>();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(common_name) = common_name {
            params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_certificate_names_its_subject_cn_and_the_dns_names_of_its_alternative_names() {
        assert_eq!(
            certificate_names(&certificate(Some("driver-7"), &["driver-7.internal", "127.0.0.1"])),
            ["driver-7", "driver-7.internal"],
            "an IP address is no driver's name"
        );
        assert_eq!(certificate_names(&certificate(Some("driver-7"), &[])), ["driver-7"]);
        assert_eq!(certificate_names(&certificate(None, &["driver-8"])), ["driver-8"]);
    }

    #[test]
    fn garbage_names_nobody() {
        assert!(certificate_names(b"not a certificate").is_empty());
    }
}
