//! TLS on the gRPC server (`BRIDGE_TLS_*`): the bridge's certificate, and,
//! with `BRIDGE_TLS_CLIENT_CA`, mutual TLS: a client without a certificate
//! chaining to that CA (or with an expired one) fails the handshake before
//! any gRPC call, the health service included. Refused handshakes are
//! logged by tonic at debug level (`RUST_LOG=info,tonic::transport=debug`).

use std::time::Duration;

use anyhow::Context as _;
use drover_service::tls::{read_certificates, read_private_key};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::config::ServerTls;

/// A client that has not finished its handshake by then is dropped, so
/// that silent connections do not hold their place under the connection
/// limit.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads and checks the configured files into tonic's server TLS settings.
pub(crate) fn server_config(tls: &ServerTls) -> anyhow::Result<ServerTlsConfig> {
    drover_service::tls::install_crypto_provider();
    let cert = read_certificates("BRIDGE_TLS_CERT", &tls.cert)?;
    let key = read_private_key("BRIDGE_TLS_KEY", &tls.key)?;
    let mut config = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .timeout(HANDSHAKE_TIMEOUT);
    if let Some(client_ca) = &tls.client_ca {
        let ca = read_certificates("BRIDGE_TLS_CLIENT_CA", client_ca)
            .context("the CA that client certificates must chain to")?;
        config = config.client_ca_root(Certificate::from_pem(ca));
    }
    Ok(config)
}
