//! CWP/1 §2, the driver's side of the handshake: HELLO → CHALLENGE → AUTH
//! → (the bridge registers the session) → WELCOME, for one accepted
//! connection, on the handshake thread ([`thread`]).
//!
//! - [`slots`]: `DRIVER_MAX_HANDSHAKES` places for connections not yet
//!   authenticated, and each one's deadline;
//! - failed authentications are counted and limited by
//!   [`drover_edge::AuthLimits`], the keys come from
//!   [`drover_edge::KeyStore`] (both shared with the HTTP gateway);
//! - [`thread`]: the thread and runtime that accept and handshake, apart
//!   from established sessions.
//!
//! [`serve`] reads a connection top to bottom like the spec's sequence;
//! every way it can end is a [`HandshakeEnd`], counted once under its
//! label, and every refusal is sent through [`crate::refusal`].

pub mod slots;
pub mod thread;

use std::sync::Arc;
use std::time::Duration;

use cwp::{
    HandshakeError, Held, MAX_HANDSHAKE_PAYLOAD, Nonce, Received, Serial, ServerFrame, ServerHandshake, ServerStep,
    SessionId, Welcome,
};
use drover_edge::KeyStore;
use drover_edge::auth_limits::{AuthLimits, Limiter};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{Instrument as _, debug, info, info_span, warn};

use self::slots::{HandshakeSlot, HandshakeSlots};
use crate::connection::{Connection, ReadError};
use crate::metrics::{LimiterLabel, ReasonLabel};
use crate::refusal::Refusal;
use crate::registry::{CloseRequest, SessionHandle};
use crate::session::Sessions;
use crate::session::established;

/// How long the handshake waits for Redis to confirm the command
/// subscription before `WELCOME` (commands then start a little later).
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What every handshake of the driver shares.
#[derive(Debug)]
pub struct Handshakes {
    /// Device keys (`CWP_MASTER_KEY`, `CWP_KEYS_FILE`).
    pub keys: KeyStore,
    /// Failed authentications per address and per serial.
    pub auth_limits: AuthLimits,
    /// `DRIVER_MAX_HANDSHAKES` places, oldest evicted first.
    pub slots: Arc<HandshakeSlots>,
    /// `DRIVER_HANDSHAKE_TIMEOUT`, from accept.
    pub timeout: Duration,
    /// `DRIVER_PROXY_PROTOCOL`: a PROXY v2 header comes first.
    pub proxy_protocol: bool,
    /// Where an authenticated device's session goes.
    pub sessions: Arc<Sessions>,
}

/// How a handshake ended without a session.
#[derive(Debug)]
pub enum HandshakeEnd {
    /// The device closed the connection, or the socket failed.
    Closed,
    /// The driver refused the device, and told it why.
    Refused(Refusal),
}

impl HandshakeEnd {
    /// The `result` label of `drover_driver_handshakes_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Refused(refusal) => match refusal {
                Refusal::HandshakeTimeout => "timeout",
                Refusal::HandshakesFull => "evicted",
                Refusal::TooManyFailures => "rate_limited",
                Refusal::Handshake(HandshakeError::UnknownSerial | HandshakeError::WrongMac) => "unauthorized",
                Refusal::Handshake(HandshakeError::Revoked) => "revoked",
                Refusal::Handshake(HandshakeError::NotAllowed(_)) => "unexpected",
                Refusal::StoreUnavailable => "bridge_unavailable",
                Refusal::Violation(_) => "malformed",
                Refusal::Event(_) | Refusal::Upload(_) | Refusal::KeyRevoked => "unexpected",
            },
        }
    }
}

/// Serves one accepted connection: the handshake here (on the handshake
/// thread); then, once the device is authenticated, its session goes to
/// [`established::start`] with `permit`, its place under
/// `DRIVER_MAX_CONNECTIONS`.
///
/// The handshake runs in a tracing span (`peer`, then `serial`); the
/// established session does not: a span lives in the subscriber's registry
/// with its formatted fields for as long as it is open, a few hundred bytes
/// per idle device. Session logs name the serial themselves.
pub async fn serve(
    handshakes: Arc<Handshakes>,
    mut connection: Connection,
    slot: HandshakeSlot,
    permit: OwnedSemaphorePermit,
) {
    let metrics = &handshakes.sessions.metrics;
    metrics.connections.inc();
    // Counted toward a connect storm until WELCOME or the end.
    let handshaking = handshakes.sessions.durable.storm.handshake();
    let span = info_span!("conn", peer = %connection.peer(), serial = tracing::field::Empty);
    let handshake = handshake(&handshakes, &mut connection, slot).instrument(span).await;
    drop(handshaking);
    match handshake {
        Ok(session) => established::start(&handshakes.sessions, connection, session, permit),
        Err(end) => {
            metrics.handshake(end.label());
            if let HandshakeEnd::Refused(refusal) = &end {
                connection.send_refusal(metrics, refusal).await;
            }
            metrics.connections.dec();
        }
    }
}

/// HELLO → CHALLENGE → AUTH → (bridge: OpenSessions) → WELCOME. Returns the
/// registered session, or how it ended. `slot` is this connection's place
/// among the unauthenticated ones; it is given up once `AUTH` is verified.
async fn handshake(
    handshakes: &Handshakes,
    conn: &mut Connection,
    slot: HandshakeSlot,
) -> Result<Arc<SessionHandle>, HandshakeEnd> {
    let sessions = &handshakes.sessions;
    let metrics = &sessions.metrics;
    let deadline = slot.deadline;
    let mut state = ServerHandshake::default();
    // CWP/1 §2: nothing longer than a HELLO is held before WELCOME, whatever
    // a header announces (10,000 half-open connections announcing 64 KiB
    // frames hold 3 MiB, not 640 MiB).
    let mut held = Held::new(MAX_HANDSHAKE_PAYLOAD);
    // The serial claimed in HELLO, for counting a failed AUTH against it.
    let mut claimed: Option<Serial> = None;
    let (serial, firmware, session_key) = loop {
        let frame = tokio::select! {
            read = tokio::time::timeout_at(deadline, conn.read_held(&mut held)) => match read {
                Ok(Ok(Received::Frame(frame))) => frame,
                Ok(Ok(Received::TooLongToHold(frame_type))) => {
                    return Err(HandshakeEnd::Refused(Refusal::Handshake(HandshakeError::NotAllowed(frame_type))));
                }
                Ok(Err(ReadError::Decode(err))) => {
                    debug!(error = %err, "undecodable handshake frame");
                    return Err(HandshakeEnd::Refused(err.into()));
                }
                Ok(Err(ReadError::Closed | ReadError::Io(_))) => return Err(HandshakeEnd::Closed),
                Err(_elapsed) => return Err(HandshakeEnd::Refused(Refusal::HandshakeTimeout)),
            },
            () = slot.evicted() => return Err(HandshakeEnd::Refused(Refusal::HandshakesFull)),
        };
        if let cwp::DeviceFrame::Hello(hello) = &frame {
            // Refused before anything else is done for it (no nonce, no
            // key lookup), with the same answer whether the serial exists.
            if let Some(limiter) = handshakes.auth_limits.refuses(conn.peer().ip(), &hello.serial) {
                debug!(serial = %hello.serial, limiter = limiter.label(), "too many failed authentications: HELLO refused");
                count_rate_limited(metrics, limiter);
                return Err(HandshakeEnd::Refused(Refusal::TooManyFailures));
            }
            if handshakes.keys.is_revoked(&hello.serial) {
                debug!(serial = %hello.serial, "HELLO of a revoked serial refused");
                return Err(HandshakeEnd::Refused(Refusal::Handshake(HandshakeError::Revoked)));
            }
            claimed = Some(hello.serial);
        }
        let fresh_nonce = || Nonce(rand::random());
        match state.receive(frame, fresh_nonce, |serial| handshakes.keys.device_key(serial)) {
            Ok(ServerStep::Challenge(challenge)) => {
                conn.queue(&ServerFrame::Challenge(challenge));
                if conn.flush().await.is_err() {
                    return Err(HandshakeEnd::Closed);
                }
            }
            Ok(ServerStep::Authenticated {
                serial,
                firmware,
                session_key,
            }) => break (serial, firmware, session_key),
            Err(err) => {
                info!(code = %err.code(), reason = %err, "handshake refused");
                if let HandshakeError::UnknownSerial | HandshakeError::WrongMac = err {
                    let reason = if err == HandshakeError::UnknownSerial {
                        "unknown_serial"
                    } else {
                        "wrong_mac"
                    };
                    metrics.auth_failures.get_or_create(&ReasonLabel { reason }).inc();
                    if let Some(serial) = &claimed {
                        handshakes.auth_limits.failed(conn.peer().ip(), serial);
                    }
                }
                return Err(HandshakeEnd::Refused(Refusal::Handshake(err)));
            }
        }
    };
    // Authenticated: the rest of the handshake is the server's own work.
    drop(slot);
    tracing::Span::current().record("serial", tracing::field::display(&serial));

    let session_id = SessionId(rand::random());
    // The command channel is subscribed before the bridge reads the
    // device's ledger (in OpenSession): a durable command enqueued after
    // that read is announced by a wake-up this driver hears, so the
    // session fetches its ledger only when the bridge counted commands in
    // it or a wake-up came. A connect storm of empty ledgers then costs no
    // TakeCommands at all.
    let opening = Opening::begin(sessions, serial);
    let subscribed = sessions.subscriptions.sync_confirmed(serial, SUBSCRIBE_TIMEOUT).await;
    if !subscribed {
        warn!(%serial, "command subscription not confirmed by Redis yet; commands may start late");
    }
    // The bridge gets what is left of the handshake's time (at least a
    // second): under a connect storm, registering is what takes time.
    let remaining = deadline
        .saturating_duration_since(tokio::time::Instant::now())
        .max(Duration::from_secs(1));
    let opened = match sessions
        .bridge
        .open_session(&serial, &session_id, conn.peer(), &firmware, remaining)
        .await
    {
        Ok(opened) => opened,
        Err(status) => {
            warn!(%serial, code = ?status.code(), message = %drover_edge::bridge::describe(&status), "cannot register the session: vendor-bridge unavailable");
            // Still before WELCOME: the ERROR is unsealed.
            return Err(HandshakeEnd::Refused(Refusal::StoreUnavailable));
        }
    };

    let session = Arc::new(SessionHandle::new(serial, session_id, opened.last_event_id));
    if let Some(previous) = sessions.registry.insert(session.clone()) {
        info!(%serial, "superseding this driver's older session of the same serial");
        previous.request_close(CloseRequest::Superseded);
    }
    let woken = opening.registered();
    metrics.sessions.inc();

    let settings = &sessions.settings;
    conn.codec_mut().start_sealing(&session_key);
    conn.queue(&ServerFrame::Welcome(Welcome {
        session: session_id,
        heartbeat_s: settings.heartbeat_s,
        max_payload: settings.max_payload,
        event_window: settings.event_window,
        last_event_id: opened.last_event_id,
        server: cwp::Str8::truncating(&settings.driver_id),
    }));
    conn.codec_mut().set_max_payload(settings.max_payload);
    // A WELCOME the socket did not take still leaves a registered session:
    // it ends as soon as it reads the closed socket.
    let result = if conn.flush().await.is_err() { "closed" } else { "ok" };
    metrics.handshake(result);
    // Unconfirmed, the subscription may have missed a wake-up.
    if opened.may_have_commands || woken || !subscribed {
        sessions.durable.fetch(serial);
    }
    if opened.may_have_file_offers || woken || !subscribed {
        sessions.files.fetch(serial);
    }
    debug!(%serial, last_event_id = opened.last_event_id, "session established");
    Ok(session)
}

/// A serial being registered (see [`crate::registry::Registry::begin_opening`]):
/// ends the registration however the handshake ends, and unsubscribes
/// its command channel when no session of it came of it.
struct Opening<'a> {
    sessions: &'a Sessions,
    serial: Serial,
    ended: bool,
}

impl<'a> Opening<'a> {
    fn begin(sessions: &'a Sessions, serial: Serial) -> Self {
        sessions.registry.begin_opening(serial);
        Self {
            sessions,
            serial,
            ended: false,
        }
    }

    /// The session is in the registry: whether a ledger wake-up came
    /// while it was being registered.
    fn registered(mut self) -> bool {
        self.ended = true;
        self.sessions.registry.end_opening(&self.serial)
    }
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.sessions.registry.end_opening(&self.serial);
            self.sessions.subscriptions.sync(self.serial);
        }
    }
}

fn count_rate_limited(metrics: &crate::metrics::Metrics, limiter: Limiter) {
    metrics
        .auth_rate_limited
        .get_or_create(&LimiterLabel {
            limiter: limiter.label(),
        })
        .inc();
}

#[cfg(test)]
mod tests {
    use cwp::FrameType;

    use super::*;

    #[test]
    fn every_handshake_end_has_its_metric_label() {
        let cases = [
            (HandshakeEnd::Closed, "closed"),
            (HandshakeEnd::Refused(Refusal::HandshakeTimeout), "timeout"),
            (HandshakeEnd::Refused(Refusal::HandshakesFull), "evicted"),
            (HandshakeEnd::Refused(Refusal::TooManyFailures), "rate_limited"),
            (
                HandshakeEnd::Refused(Refusal::Handshake(HandshakeError::WrongMac)),
                "unauthorized",
            ),
            (
                HandshakeEnd::Refused(Refusal::Handshake(HandshakeError::NotAllowed(FrameType::EVENT))),
                "unexpected",
            ),
            (HandshakeEnd::Refused(Refusal::StoreUnavailable), "bridge_unavailable"),
            (
                HandshakeEnd::Refused(cwp::DecodeError::BadVersion { found: 2 }.into()),
                "malformed",
            ),
        ];
        for (end, label) in cases {
            assert_eq!(end.label(), label, "{end:?}");
        }
    }
}
