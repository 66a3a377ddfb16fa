//! A low-level CWP/1 client connection: one TCP stream, the device's codec
//! and its two buffers. It does exactly what it is told, in order, so that
//! tests can provoke every server behaviour (raw bytes, frames out of
//! order, a handshake that stops half way), and [`crate::device`] builds the
//! well-behaved controller on top of it.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use cwp::{
    DecodeError, DeviceCodec, DeviceFrame, DeviceHandshake, DeviceKey, ErrorFrame, Nonce, Serial, ServerFrame, Str8,
    Welcome,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Bytes asked of the kernel per read: a burst of `ACK`s (28 bytes each)
/// fits, and an idle connection holds no receive buffer at all.
pub(crate) const READ_CHUNK: usize = 2048;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The server closed the connection.
    #[error("connection closed by the server")]
    Closed,
    /// The server sent bytes that are not a valid frame (fatal, CWP/1 §1).
    #[error("undecodable server frame: {0}")]
    Decode(#[from] DecodeError),
    /// The server answered the handshake with an `ERROR`.
    #[error("refused: {} ({})", .0.code, .0.message)]
    Refused(ErrorFrame),
    /// Nothing arrived in time.
    #[error("timed out")]
    Timeout,
    /// The server sent a frame the current step does not allow.
    #[error("unexpected frame {0:?}")]
    Unexpected(ServerFrame),
}

/// A TCP connection to `addr` from the local address `source`, the port
/// chosen by the kernel at connect time.
///
/// `IP_BIND_ADDRESS_NO_PORT` defers the choice of the local port from
/// `bind` to `connect`, so that a port is unique per (source, destination)
/// pair rather than per source: each source address then offers its ~28,000
/// ephemeral ports to every destination (Linux ≥ 4.2; elsewhere the option
/// is refused and the kernel picks at `bind` as usual).
pub async fn connect_from(addr: SocketAddr, source: IpAddr) -> io::Result<TcpStream> {
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Err(error) = nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::IpBindAddressNoPort, &true) {
        tracing::debug!(%error, "IP_BIND_ADDRESS_NO_PORT refused");
    }
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr).await
}

/// One CWP/1 connection from the device's side.
#[derive(Debug)]
pub struct Connection {
    /// The socket, `TCP_NODELAY`: frames are batched in `tx` instead.
    pub(crate) stream: TcpStream,
    /// Framing state; sealed once the handshake has produced a key.
    pub(crate) codec: DeviceCodec,
    /// Received bytes not yet decoded. Never grows beyond
    /// [`DeviceCodec::read_limit`] allows.
    pub(crate) rx: BytesMut,
    /// Encoded frames not yet written.
    pub(crate) tx: BytesMut,
}

impl Connection {
    /// Connects to `addr` from an address the kernel picks.
    pub async fn connect(addr: SocketAddr) -> Result<Self, ClientError> {
        let stream = TcpStream::connect(addr).await?;
        Self::from_stream(stream)
    }

    /// Connects to `addr` from the local address `source` (port chosen by
    /// the kernel), so that many connections can spread over several
    /// loopback addresses (`127.0.0.x`) and not run out of ports.
    pub async fn connect_from(addr: SocketAddr, source: IpAddr) -> Result<Self, ClientError> {
        let stream = connect_from(addr, source).await?;
        Self::from_stream(stream)
    }

    /// Connects from `source` if given, else from any address.
    pub async fn open(addr: SocketAddr, source: Option<IpAddr>) -> Result<Self, ClientError> {
        match source {
            Some(source) => Self::connect_from(addr, source).await,
            None => Self::connect(addr).await,
        }
    }

    fn from_stream(stream: TcpStream) -> Result<Self, ClientError> {
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            codec: DeviceCodec::new(),
            rx: BytesMut::new(),
            tx: BytesMut::new(),
        })
    }

    /// The local address of the socket.
    pub fn local_addr(&self) -> Result<SocketAddr, ClientError> {
        Ok(self.stream.local_addr()?)
    }

    /// The codec, e.g. to start sealing by hand or change `max_payload`.
    pub fn codec_mut(&mut self) -> &mut DeviceCodec {
        &mut self.codec
    }

    /// Encodes `frame` (sealed once sealing has started) and writes it.
    pub async fn send(&mut self, frame: &DeviceFrame) -> Result<(), ClientError> {
        self.codec.encode(frame, &mut self.tx);
        self.flush().await
    }

    /// Encodes every frame and writes them all with as few writes as the
    /// kernel allows.
    pub async fn send_all(&mut self, frames: &[DeviceFrame]) -> Result<(), ClientError> {
        for frame in frames {
            self.codec.encode(frame, &mut self.tx);
        }
        self.flush().await
    }

    /// Writes `bytes` as they are, bypassing the codec (a broken or hostile
    /// device). The seal's counters do not move.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ClientError> {
        self.stream.write_all(&self.tx).await?;
        self.tx.clear();
        Ok(())
    }

    /// The next frame from the server. A server `ERROR` is a frame like any
    /// other here; only [`Connection::handshake`] turns it into an error.
    pub async fn recv(&mut self) -> Result<ServerFrame, ClientError> {
        loop {
            if let Some(frame) = self.codec.decode(&mut self.rx)? {
                return Ok(frame);
            }
            let limit = self.codec.read_limit(self.rx.len());
            if limit == 0 {
                // The codec guarantees that a buffer of one header plus
                // max_payload holds a whole frame; this is a codec bug.
                return Err(io::Error::new(io::ErrorKind::InvalidData, "receive buffer full without a frame").into());
            }
            let want = self.codec.bytes_needed(&self.rx).max(READ_CHUNK).min(limit);
            self.rx.reserve(want);
            let read = self.stream.read_buf(&mut (&mut self.rx).limit(want)).await?;
            if read == 0 {
                return Err(ClientError::Closed);
            }
        }
    }

    /// [`Connection::recv`] with a deadline: [`ClientError::Timeout`] if no
    /// whole frame arrives within `timeout`.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<ServerFrame, ClientError> {
        tokio::time::timeout(timeout, self.recv())
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    /// CWP/1 §2 Session, the device's side: `HELLO`, `CHALLENGE`, `AUTH`,
    /// then sealing starts and `WELCOME` arrives; its `max_payload` then
    /// bounds received frames. A server `ERROR` at any step is
    /// [`ClientError::Refused`]. `firmware` is cut to the 255 bytes a `str8`
    /// holds.
    pub async fn handshake(&mut self, serial: Serial, key: &DeviceKey, firmware: &str) -> Result<Welcome, ClientError> {
        let nonce_d = Nonce(rand::random());
        let (handshake, hello) = DeviceHandshake::start(serial, Str8::truncating(firmware), key.clone(), nonce_d);
        self.send(&hello).await?;
        let challenge = match self.recv().await? {
            ServerFrame::Challenge(challenge) => challenge,
            ServerFrame::Error(error) => return Err(ClientError::Refused(error)),
            other => return Err(ClientError::Unexpected(other)),
        };
        let (auth, session_key) = handshake.answer(&challenge);
        self.send(&auth).await?;
        // CWP/1 §1 Tags: everything from WELCOME on is sealed; AUTH is not.
        self.codec.start_sealing(&session_key);
        match self.recv().await? {
            ServerFrame::Welcome(welcome) => {
                self.codec.set_max_payload(welcome.max_payload);
                Ok(welcome)
            }
            ServerFrame::Error(error) => Err(ClientError::Refused(error)),
            other => Err(ClientError::Unexpected(other)),
        }
    }

    /// Whether the server closes the connection within `timeout`: reads
    /// and discards everything until end of stream (a reset counts as
    /// closed).
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        let drain = async {
            loop {
                self.rx.clear();
                self.rx.reserve(READ_CHUNK);
                match self.stream.read_buf(&mut self.rx).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(timeout, drain).await.is_ok()
    }
}
