//! The peer's device: an MQTT 3.1.1 client that holds its connection the
//! way an idle IoT device holds one with a broker, for the idle benchmark's
//! comparison with Mosquitto.
//!
//! `CONNECT` (clean session, the serial as client id, a keep-alive), wait
//! for `CONNACK`, then a `PINGREQ` every keep-alive period and a `PINGRESP`
//! back; reconnect with jittered backoff when the connection is lost.
//! Packets are encoded and decoded by `rumqttc::mqttbytes::v4`, the
//! maintained home of the `mqttbytes` codec (the standalone `mqttbytes`
//! crate was folded into rumqttc in 2021 and has not been released since);
//! only its codec is used, not its client, whose event loop and request
//! channels would cost far more per connection than the device being
//! measured.
//!
//! Like [`crate::device::Device`], an idle client holds no buffer: only
//! its socket, its client id and a few timers.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes;
use rumqttc::mqttbytes::v4::{ConnAck, Connect, ConnectReturnCode, Packet};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, sleep_until};

use crate::device::{Backoff, Control, Endpoint, Stats, jitter};

/// Largest packet accepted from the broker (a `CONNACK` or `PINGRESP` is
/// 4 or 2 bytes; nothing else is expected).
const MAX_PACKET: usize = 1024;
/// Bytes read per read call.
const READ_CHUNK: usize = 64;

/// How the MQTT devices of a run behave.
#[derive(Debug, Clone)]
pub struct MqttBehaviour {
    /// `CONNECT.keep_alive`; a `PINGREQ` goes out this often.
    pub keep_alive: Duration,
    /// Longest TCP connect plus `CONNECT` → `CONNACK`.
    pub handshake_timeout: Duration,
    /// Reconnect delays after a failure.
    pub reconnect: Backoff,
}

impl Default for MqttBehaviour {
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(15),
            reconnect: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
        }
    }
}

/// Why an MQTT session ended badly.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The broker closed the connection.
    #[error("connection closed by the broker")]
    Closed,
    /// No `CONNACK` or `PINGRESP` in time.
    #[error("timed out")]
    Timeout,
    /// `CONNACK` with a refusal.
    #[error("refused: {0:?}")]
    Refused(ConnectReturnCode),
    /// Bytes that are not the packet expected.
    #[error("protocol: {0}")]
    Protocol(String),
}

impl From<mqttbytes::Error> for MqttError {
    fn from(error: mqttbytes::Error) -> Self {
        Self::Protocol(error.to_string())
    }
}

/// How one session ended.
enum MqttEnd {
    /// Told to finish: `DISCONNECT` sent.
    Finished,
    /// Told to abort.
    Aborted,
    /// Lost.
    Failed(MqttError),
}

/// One simulated MQTT device.
#[derive(Debug)]
pub struct MqttDevice {
    /// `CONNECT.client_id`.
    client_id: String,
    /// Sessions established so far.
    sessions: u32,
}

impl MqttDevice {
    /// A device that connects as `client_id`.
    pub fn new(client_id: String) -> Self {
        Self { client_id, sessions: 0 }
    }

    /// Runs the device until `control` says to stop: waits `start_delay`,
    /// connects, pings, reconnects after every loss.
    pub async fn run(
        &mut self,
        endpoint: Endpoint,
        start_delay: Duration,
        behaviour: &MqttBehaviour,
        stats: &Stats,
        control: &Control,
    ) {
        let mut delay = start_delay;
        let mut failures = 0;
        loop {
            if !delay.is_zero() {
                tokio::select! {
                    biased;
                    () = control.aborted() => return,
                    () = control.finishing() => return,
                    () = sleep(delay) => {}
                }
            }
            if control.is_finishing() {
                return;
            }
            if self.sessions > 0 || failures > 0 {
                stats.reconnecting();
            }
            match self.session(endpoint, behaviour, stats, control).await {
                MqttEnd::Finished | MqttEnd::Aborted => return,
                MqttEnd::Failed(error) => {
                    tracing::debug!(client_id = %self.client_id, %error, "mqtt session failed");
                    failures += 1;
                    delay = behaviour.reconnect.delay(failures);
                }
            }
        }
    }

    async fn session(
        &mut self,
        endpoint: Endpoint,
        behaviour: &MqttBehaviour,
        stats: &Stats,
        control: &Control,
    ) -> MqttEnd {
        let began = Instant::now();
        let opening = tokio::time::timeout(behaviour.handshake_timeout, self.open(endpoint, behaviour, stats));
        let opened = tokio::select! {
            biased;
            () = control.aborted() => return MqttEnd::Aborted,
            opened = opening => opened,
        };
        let (mut stream, mut rx) = match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(error)) => return MqttEnd::Failed(error),
            Err(_elapsed) => {
                stats.handshake_failed();
                return MqttEnd::Failed(MqttError::Timeout);
            }
        };
        stats.session_opened(self.sessions == 0, began.elapsed());
        self.sessions += 1;
        let end = Self::hold(&mut stream, &mut rx, behaviour, stats, control).await;
        stats.session_closed();
        if matches!(end, MqttEnd::Failed(_)) {
            stats.disconnected();
        }
        end
    }

    /// TCP connect, `CONNECT`, `CONNACK`.
    async fn open(
        &self,
        endpoint: Endpoint,
        behaviour: &MqttBehaviour,
        stats: &Stats,
    ) -> Result<(TcpStream, BytesMut), MqttError> {
        let connected = match endpoint.source {
            Some(source) => crate::client::connect_from(endpoint.target, source).await,
            None => TcpStream::connect(endpoint.target).await,
        };
        let mut stream = connected.inspect_err(|_| stats.connect_failed())?;
        stream.set_nodelay(true)?;
        let handshake = async {
            let mut connect = Connect::new(self.client_id.as_str());
            connect.keep_alive = u16::try_from(behaviour.keep_alive.as_secs().max(1)).unwrap_or(u16::MAX);
            connect.clean_session = true;
            let mut tx = BytesMut::new();
            Packet::Connect(connect).write(&mut tx, MAX_PACKET)?;
            stream.write_all(&tx).await?;
            let mut rx = BytesMut::new();
            match read_packet(&mut stream, &mut rx).await? {
                Packet::ConnAck(ConnAck {
                    code: ConnectReturnCode::Success,
                    ..
                }) => Ok(rx),
                Packet::ConnAck(ConnAck { code, .. }) => Err(MqttError::Refused(code)),
                other => Err(MqttError::Protocol(format!("expected CONNACK, got {other:?}"))),
            }
        };
        let rx = handshake.await.inspect_err(|_| stats.handshake_failed())?;
        Ok((stream, rx))
    }

    /// The established session: a `PINGREQ` every keep-alive, and the
    /// broker's answers; dead after two keep-alives without a `PINGRESP`.
    async fn hold(
        stream: &mut TcpStream,
        rx: &mut BytesMut,
        behaviour: &MqttBehaviour,
        stats: &Stats,
        control: &Control,
    ) -> MqttEnd {
        let keep_alive = behaviour.keep_alive.max(Duration::from_secs(1));
        // A random phase, so that the fleet's pings do not come in step.
        let mut next_ping = Instant::now() + jitter(keep_alive);
        let mut last_rx = Instant::now();
        let result: Result<MqttEnd, MqttError> = async {
            loop {
                tokio::select! {
                    biased;
                    () = control.aborted() => return Ok(MqttEnd::Aborted),
                    () = control.finishing() => {
                        let mut tx = BytesMut::new();
                        Packet::Disconnect.write(&mut tx, MAX_PACKET)?;
                        stream.write_all(&tx).await?;
                        return Ok(MqttEnd::Finished);
                    }
                    () = sleep_until(next_ping) => {
                        if last_rx.elapsed() > 2 * keep_alive {
                            return Err(MqttError::Timeout);
                        }
                        let mut tx = BytesMut::new();
                        Packet::PingReq.write(&mut tx, MAX_PACKET)?;
                        stream.write_all(&tx).await?;
                        stats.ping_sent();
                        next_ping += keep_alive;
                    }
                    readable = stream.readable() => {
                        readable?;
                        if read_some(stream, rx)? {
                            last_rx = Instant::now();
                        }
                        while let Some(packet) = next_packet(rx)? {
                            if packet != Packet::PingResp {
                                stats.unexpected_frame();
                            }
                        }
                        if rx.is_empty() {
                            // Hold no buffer while idle.
                            *rx = BytesMut::new();
                        }
                    }
                }
            }
        }
        .await;
        result.unwrap_or_else(MqttEnd::Failed)
    }
}

/// Reads what the socket has now into `rx`; false on a spurious wake-up.
fn read_some(stream: &TcpStream, rx: &mut BytesMut) -> Result<bool, MqttError> {
    let mut chunk = [0u8; READ_CHUNK];
    match stream.try_read(&mut chunk) {
        Ok(0) => Err(MqttError::Closed),
        Ok(read) => {
            if rx.len() + read > MAX_PACKET + 5 {
                return Err(MqttError::Protocol("broker sent more than it should".to_owned()));
            }
            rx.extend_from_slice(&chunk[..read]);
            Ok(true)
        }
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(error) => Err(error.into()),
    }
}

/// The next whole packet in `rx`, if there is one.
fn next_packet(rx: &mut BytesMut) -> Result<Option<Packet>, MqttError> {
    if rx.is_empty() {
        return Ok(None);
    }
    match Packet::read(rx, MAX_PACKET) {
        Ok(packet) => Ok(Some(packet)),
        Err(mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// Waits for the next whole packet.
async fn read_packet(stream: &mut TcpStream, rx: &mut BytesMut) -> Result<Packet, MqttError> {
    loop {
        if let Some(packet) = next_packet(rx)? {
            return Ok(packet);
        }
        stream.readable().await?;
        read_some(stream, rx)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_and_pings_are_mqtt_3_1_1_bytes() {
        let mut connect = Connect::new("SIM-000001");
        connect.keep_alive = 30;
        let mut tx = BytesMut::new();
        Packet::Connect(connect).write(&mut tx, MAX_PACKET).unwrap();
        // Fixed header CONNECT, remaining length 22; "MQTT", level 4, flags
        // clean session, keep-alive 30, client id.
        let mut expected = vec![0x10, 22, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30, 0, 10];
        expected.extend_from_slice(b"SIM-000001");
        assert_eq!(&tx[..], &expected[..]);

        let mut tx = BytesMut::new();
        Packet::PingReq.write(&mut tx, MAX_PACKET).unwrap();
        assert_eq!(&tx[..], [0xC0, 0x00]);
    }

    #[test]
    fn packets_are_taken_whole_from_the_buffer() {
        // CONNACK accepted, then half a PINGRESP.
        let mut rx = BytesMut::from(&[0x20, 0x02, 0x00, 0x00, 0xD0][..]);
        assert_eq!(
            next_packet(&mut rx).unwrap(),
            Some(Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false)))
        );
        assert_eq!(next_packet(&mut rx).unwrap(), None);
        rx.extend_from_slice(&[0x00]);
        assert_eq!(next_packet(&mut rx).unwrap(), Some(Packet::PingResp));
        assert!(rx.is_empty());
        // A refusal is a CONNACK with a code.
        let mut rx = BytesMut::from(&[0x20, 0x02, 0x00, 0x05][..]);
        assert!(matches!(
            next_packet(&mut rx).unwrap(),
            Some(Packet::ConnAck(ConnAck {
                code: ConnectReturnCode::NotAuthorized,
                ..
            }))
        ));
    }
}
