//! Nobody but a driver reaches the bridge (README, Security):
//!
//! - with `BRIDGE_TOKEN`, every `VendorBridge` call without the token, or
//!   with another one, is `UNAUTHENTICATED` and changes nothing: no key
//!   written (the whole database compared before and after), nothing
//!   published, the high-water mark of a serial untouched by a stranger's
//!   event id `u64::MAX`; `grpc.health.v1` needs no token; the right token
//!   works;
//! - with mutual TLS, a certificate naming another driver is
//!   `PERMISSION_DENIED` on every call and changes nothing; an expired
//!   certificate, or one from another CA, never gets past the handshake.
//!
//! Each refusal has its control in the same test: the same calls with the
//! right token, or as the certificate's own driver, are accepted, so the
//! refused ones are real writes the bridge withheld.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;

use drover_proto::bridge::vendor_bridge_client::VendorBridgeClient;
use drover_proto::bridge::{BatchDurable, RejectCommandRequest};
use drover_testkit::pki::{Authority, ExtendedKeyUsagePurpose};
use drover_testkit::redis::RedisServer;
use drover_testkit::wait::within;
use futures::StreamExt as _;
use support::calls::{As, every_unary_call, with_token};
use support::{Bridge, DEADLINE, DriverStream, contents, counts, event, hget};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use vendor_bridge::config::ServerTls;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";
const WRONG_TOKEN: &str = "fedcba9876543210fedcba9876543210";

// --- The token ------------------------------------------------------------

/// A stranger's stream: hello, then a command result (which the bridge
/// would publish on `cwp:cmd-result:CTRL-1`) with the largest event id.
async fn strangers_stream(
    client: &mut VendorBridgeClient<Channel>,
    token: Option<&str>,
) -> Result<BatchDurable, tonic::Status> {
    let mut stream = DriverStream::open_as(
        client,
        As {
            driver_id: "drv-x",
            token,
        },
        "stranger",
    )
    .await?;
    let result = cwp::CommandResult {
        command_id: cwp::CommandId([7; 16]),
        status: cwp::CommandStatus(0),
        data: "pwned".into(),
    };
    stream
        .send(1, vec![event("CTRL-1", u64::MAX, 0xFFFF, &result.encode())])
        .await;
    stream
        .next()
        .await?
        .ok_or_else(|| tonic::Status::aborted("the stream ended"))
}

#[tokio::test]
async fn without_the_token_or_with_a_wrong_one_every_call_is_unauthenticated_and_changes_nothing() {
    let bridge = Bridge::start_with(RedisServer::start().unwrap(), |config| {
        config.token = Some(drover_proto::auth::BearerToken::new(TOKEN).unwrap());
    })
    .await;
    let mut client = bridge.client().await;
    let mut redis = bridge.redis().await;
    let driver = As {
        driver_id: "drv-a",
        token: Some(TOKEN),
    };

    // The right token works: CTRL-1's high-water mark is 5.
    let mut stream = DriverStream::open_as(&mut client, driver, "inst-1").await.unwrap();
    assert_eq!(
        counts(&stream.store(1, vec![event("CTRL-1", 5, 1, b"mine")]).await),
        (1, 1, 0)
    );
    let before = contents(&mut redis).await;
    let mut published = support::redis_client(&bridge.redis).get_async_pubsub().await.unwrap();
    published.psubscribe("cwp:cmd-result:*").await.unwrap();

    for token in [None, Some(WRONG_TOKEN)] {
        let refused = strangers_stream(&mut client, token).await.unwrap_err();
        assert_eq!(
            refused.code(),
            Code::Unauthenticated,
            "StreamEvents with {token:?}: {refused:?}"
        );
        let stranger = As {
            driver_id: "drv-a",
            token,
        };
        for (call, outcome) in every_unary_call(&mut client, "CTRL-1", stranger).await {
            let status = outcome.expect_err(call);
            assert_eq!(
                status.code(),
                Code::Unauthenticated,
                "{call} with {token:?}: {status:?}"
            );
        }
    }

    assert_eq!(contents(&mut redis).await, before, "a stranger changed Redis");
    assert_eq!(hget(&mut redis, "cwp:hwm", "CTRL-1").await.as_deref(), Some("5"));
    // Nothing published: the first message on cwp:cmd-result:* is the
    // driver's own notice, sent after every refused call was answered
    // (Redis delivers one subscriber's messages in publishing order), and
    // awaited for at most support::DEADLINE.
    let sentinel = RejectCommandRequest {
        serial: "SENTINEL".to_owned(),
        outcome: "UNDELIVERED".to_owned(),
        driver_id: "drv-a".to_owned(),
        reason: "the sentinel".to_owned(),
        ..RejectCommandRequest::default()
    };
    client.reject_command(with_token(sentinel, Some(TOKEN))).await.unwrap();
    let first = within("the sentinel's notice", DEADLINE, published.on_message().next())
        .await
        .unwrap();
    assert_eq!(first.get_channel_name(), "cwp:cmd-result:SENTINEL");

    // The health service is open to probes without a token.
    let mut health = HealthClient::new(bridge.channel().await);
    health.check(HealthCheckRequest::default()).await.unwrap();

    // The control: the same calls with the token are real writes.
    assert_eq!(
        counts(&strangers_stream(&mut client, Some(TOKEN)).await.unwrap()),
        (1, 1, 0)
    );
    assert_eq!(hget(&mut redis, "cwp:hwm", "CTRL-1").await, Some(u64::MAX.to_string()));
    for (call, outcome) in every_unary_call(&mut client, "CTRL-2", driver).await {
        outcome.unwrap_or_else(|status| panic!("{call} with the token: {status:?}"));
    }
    assert_ne!(contents(&mut redis).await, before);
}

// --- Mutual TLS --------------------------------------------------------------

/// The fleet's CA, the bridge's certificate and key in files, and client
/// certificates.
struct Pki {
    dir: tempfile::TempDir,
    fleet: Authority,
    other: Authority,
}

impl Pki {
    fn mint() -> Self {
        let pki = Self {
            dir: tempfile::tempdir().unwrap(),
            fleet: Authority::new("drover test fleet CA"),
            other: Authority::new("some other CA"),
        };
        std::fs::write(pki.path("ca.pem"), &pki.fleet.pem).unwrap();
        let (cert, key) = pki
            .fleet
            .sign(&["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth, false);
        std::fs::write(pki.path("bridge.pem"), cert).unwrap();
        std::fs::write(pki.path("bridge.key"), key).unwrap();
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn server_tls(&self) -> ServerTls {
        ServerTls {
            cert: self.path("bridge.pem"),
            key: self.path("bridge.key"),
            client_ca: Some(self.path("ca.pem")),
        }
    }

    /// A client of `bridge` presenting `(cert, key)`; the connection error,
    /// if the bridge refuses it while connecting.
    async fn client(
        &self,
        bridge: &Bridge,
        (cert, key): (String, String),
    ) -> Result<VendorBridgeClient<Channel>, String> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.fleet.pem))
            .identity(Identity::from_pem(cert, key))
            .domain_name("localhost");
        let channel = Channel::from_shared(format!("https://127.0.0.1:{}", bridge.addr.port()))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .map_err(|err| format!("{err:?}"))?;
        Ok(VendorBridgeClient::new(channel))
    }
}

async fn tls_bridge(pki: &Pki) -> Bridge {
    drover_service::tls::install_crypto_provider();
    Bridge::start_with(RedisServer::start().unwrap(), |config| {
        config.tls = Some(pki.server_tls());
    })
    .await
}

#[tokio::test]
async fn a_certificate_naming_another_driver_is_permission_denied_and_changes_nothing() {
    let pki = Pki::mint();
    let bridge = tls_bridge(&pki).await;
    let certificate = pki
        .fleet
        .sign(&["driver-1"], ExtendedKeyUsagePurpose::ClientAuth, false);
    let mut client = pki.client(&bridge, certificate).await.unwrap();
    bridge.checked().await;
    let mut redis = bridge.redis().await;
    let before = contents(&mut redis).await;

    let impostor = As {
        driver_id: "driver-2",
        token: None,
    };
    let refused = DriverStream::open_as(&mut client, impostor, "i").await.err().unwrap();
    assert_eq!(refused.code(), Code::PermissionDenied, "StreamEvents: {refused:?}");
    for (call, outcome) in every_unary_call(&mut client, "CTRL-1", impostor).await {
        let status = outcome.expect_err(call);
        assert_eq!(status.code(), Code::PermissionDenied, "{call}: {status:?}");
        assert!(
            status.message().contains("driver-1"),
            "{call}: says what the certificate names: {status:?}"
        );
    }
    assert_eq!(contents(&mut redis).await, before, "an impostor changed Redis");

    // The control: as the driver its certificate names, every call works.
    let itself = As {
        driver_id: "driver-1",
        token: None,
    };
    let mut stream = DriverStream::open_as(&mut client, itself, "i").await.unwrap();
    assert_eq!(
        counts(&stream.store(1, vec![event("CTRL-1", 1, 1, b"")]).await),
        (1, 1, 0)
    );
    for (call, outcome) in every_unary_call(&mut client, "CTRL-1", itself).await {
        outcome.unwrap_or_else(|status| panic!("{call} as driver-1: {status:?}"));
    }
}

#[tokio::test]
async fn an_expired_or_foreign_certificate_is_refused_at_the_handshake() {
    let pki = Pki::mint();
    let bridge = tls_bridge(&pki).await;
    bridge.checked().await;
    let mut redis = bridge.redis().await;
    let before = contents(&mut redis).await;
    let expired = pki.fleet.sign(&["driver-1"], ExtendedKeyUsagePurpose::ClientAuth, true);
    let foreign = pki
        .other
        .sign(&["driver-1"], ExtendedKeyUsagePurpose::ClientAuth, false);

    let driver = As {
        driver_id: "driver-1",
        token: None,
    };
    for (name, certificate, alert) in [
        ("expired", expired, "received fatal alert: CertificateExpired"),
        ("foreign", foreign, "received fatal alert: UnknownCA"),
    ] {
        // TLS 1.3 lets the client finish its side of the handshake before
        // the server has checked the client's certificate: the refusal
        // arrives as the server's alert, on connecting or on the first call.
        let error = match pki.client(&bridge, certificate).await {
            Err(error) => error,
            Ok(mut client) => {
                let outcomes = every_unary_call(&mut client, "CTRL-1", driver).await;
                let (_, outcome) = &outcomes[0];
                format!("{:?}", outcome.as_ref().expect_err(name))
            }
        };
        assert!(error.contains(alert), "{name}: refused by the TLS handshake: {error}");
    }
    assert_eq!(contents(&mut redis).await, before);

    // The control: the fleet CA's valid certificate gets in.
    let valid = pki
        .fleet
        .sign(&["driver-1"], ExtendedKeyUsagePurpose::ClientAuth, false);
    let mut client = pki.client(&bridge, valid).await.unwrap();
    for (call, outcome) in every_unary_call(&mut client, "CTRL-1", driver).await {
        outcome.unwrap_or_else(|status| panic!("{call}: {status:?}"));
    }
}
