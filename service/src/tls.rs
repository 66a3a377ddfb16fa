//! The PEM files of the internal links' TLS (driver ↔ vendor-bridge),
//! read and checked at start: a missing file, a key where a certificate
//! belongs or a truncated PEM block is reported with the variable that
//! named the file, before any connection is tried, instead of surfacing
//! later as an opaque handshake failure.
//!
//! The checked PEM text is handed to tonic as it is; rustls parses it again
//! (and checks that a key matches its certificate) when the server or the
//! channel is built.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Makes ring the process's rustls crypto provider. rustls cannot pick one
/// by itself when, as here, two are compiled in (ring for tonic, aws-lc-rs
/// through Sentry's HTTP client), and tonic's TLS server would panic. Call
/// it before building any TLS configuration; later calls change nothing.
pub fn install_crypto_provider() {
    // Err: a provider is installed already, which is all that is needed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A PEM file that cannot serve its purpose.
#[derive(Debug, thiserror::Error)]
pub enum PemFileError {
    /// The file could not be read at all.
    #[error("{variable}={}: cannot read the file: {source}", path.display())]
    Unreadable {
        /// The variable that named the file.
        variable: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The file is not well-formed PEM.
    #[error("{variable}={}: not valid PEM: {detail}", path.display())]
    Malformed {
        /// The variable that named the file.
        variable: &'static str,
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        detail: String,
    },
    /// Well-formed, but without the kind of block expected.
    #[error("{variable}={}: no {expected} found in the file", path.display())]
    Missing {
        /// The variable that named the file.
        variable: &'static str,
        /// The file.
        path: PathBuf,
        /// E.g. "CERTIFICATE block".
        expected: &'static str,
    },
}

/// Reads a file of one or more certificates (`-----BEGIN CERTIFICATE-----`):
/// a certificate chain, or the CA certificates to trust. Returns the PEM
/// text.
pub fn read_certificates(variable: &'static str, path: &Path) -> Result<Vec<u8>, PemFileError> {
    let pem = read(variable, path)?;
    let mut found = 0_usize;
    for certificate in CertificateDer::pem_slice_iter(&pem) {
        certificate.map_err(|err| malformed(variable, path, &err))?;
        found += 1;
    }
    if found == 0 {
        return Err(PemFileError::Missing {
            variable,
            path: path.to_owned(),
            expected: "CERTIFICATE block",
        });
    }
    Ok(pem)
}

/// Reads a file holding a private key (PKCS#8, PKCS#1 or SEC1 PEM).
/// Returns the PEM text.
pub fn read_private_key(variable: &'static str, path: &Path) -> Result<Vec<u8>, PemFileError> {
    let pem = read(variable, path)?;
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(_) => Ok(pem),
        Err(rustls_pki_types::pem::Error::NoItemsFound) => Err(PemFileError::Missing {
            variable,
            path: path.to_owned(),
            expected: "PRIVATE KEY block",
        }),
        Err(err) => Err(malformed(variable, path, &err)),
    }
}

fn read(variable: &'static str, path: &Path) -> Result<Vec<u8>, PemFileError> {
    std::fs::read(path).map_err(|source| PemFileError::Unreadable {
        variable,
        path: path.to_owned(),
        source,
    })
}

fn malformed(variable: &'static str, path: &Path, err: &rustls_pki_types::pem::Error) -> PemFileError {
    PemFileError::Malformed {
        variable,
        path: path.to_owned(),
        detail: err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn file(content: &str) -> (tempfile::NamedTempFile, PathBuf) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, content.as_bytes()).unwrap();
        let path = file.path().to_owned();
        (file, path)
    }

    #[test]
    fn a_missing_file_names_the_variable_and_the_path() {
        let err = read_certificates("SOME_CA", Path::new("/nonexistent/ca.pem")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("SOME_CA=/nonexistent/ca.pem: cannot read the file"),
            "{text}"
        );
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let (_guard, path) = file("just some text\n");
        let err = read_certificates("SOME_CA", &path).unwrap_err();
        assert!(matches!(err, PemFileError::Missing { .. }), "{err}");
    }

    #[test]
    fn a_truncated_pem_block_is_refused() {
        let (_guard, path) = file("-----BEGIN CERTIFICATE-----\nMIIB\n");
        let err = read_certificates("SOME_CA", &path).unwrap_err();
        assert!(matches!(err, PemFileError::Malformed { .. }), "{err}");
    }

    #[test]
    fn a_certificate_is_not_a_private_key() {
        let (_guard, path) = file("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
        let err = read_private_key("SOME_KEY", &path).unwrap_err();
        assert!(matches!(err, PemFileError::Missing { .. }), "{err}");
    }
}
