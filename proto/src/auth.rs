//! Who may call the vendor-bridge: besides mutual TLS, a shared secret for
//! plaintext private networks. Every call carries gRPC metadata
//! `authorization: Bearer <token>` ([`AttachToken`], on the client), and
//! the bridge refuses a call without the right one with `UNAUTHENTICATED`
//! before anything else happens ([`RequireToken`], on the server),
//! comparing in constant time.

use std::fmt;
use std::sync::Arc;

use subtle::ConstantTimeEq as _;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};
use zeroize::Zeroizing;

/// The least length of a token: shorter ones are guessable.
pub const MIN_TOKEN_LEN: usize = 16;

/// The shared secret (`BRIDGE_TOKEN` on the bridge, `VENDOR_BRIDGE_TOKEN`
/// on the drivers). Never printed; wiped from memory when dropped.
#[derive(Clone)]
pub struct BearerToken(Arc<Zeroizing<String>>);

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(***)")
    }
}

/// Why a configured token is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidToken {
    /// Fewer than [`MIN_TOKEN_LEN`] characters.
    #[error("a token needs at least {MIN_TOKEN_LEN} characters (e.g. `openssl rand -hex 32`)")]
    TooShort,
    /// Characters that cannot travel in gRPC metadata.
    #[error("a token is visible ASCII characters only (no spaces)")]
    NotVisibleAscii,
}

impl BearerToken {
    /// A token from configuration text (surrounding whitespace, such as a
    /// token file's final newline, is not part of it).
    pub fn new(text: &str) -> Result<Self, InvalidToken> {
        let text = text.trim();
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidToken::NotVisibleAscii);
        }
        if text.len() < MIN_TOKEN_LEN {
            return Err(InvalidToken::TooShort);
        }
        Ok(Self(Arc::new(Zeroizing::new(text.to_owned()))))
    }

    /// Whether `presented` (an `authorization` value) is `Bearer <this
    /// token>`, in constant time for the token's bytes.
    fn admits(&self, presented: &[u8]) -> bool {
        let Some(token) = presented.strip_prefix(b"Bearer ") else {
            return false;
        };
        bool::from(token.ct_eq(self.0.as_bytes()))
    }
}

/// The client's interceptor: puts the token, if any, on every call.
#[derive(Debug, Clone)]
pub struct AttachToken(Option<MetadataValue<Ascii>>);

impl AttachToken {
    /// Attaches `token`, or nothing (mutual TLS alone, or a loopback bridge).
    pub fn new(token: Option<&BearerToken>) -> Self {
        Self(token.map(|token| {
            format!("Bearer {}", token.0.as_str())
                .parse()
                .expect("a BearerToken is visible ASCII, valid in metadata")
        }))
    }
}

impl Interceptor for AttachToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The server's interceptor: refuses a call that does not carry the token.
#[derive(Debug, Clone)]
pub struct RequireToken(BearerToken);

impl RequireToken {
    /// Requires `token` on every call.
    pub fn new(token: BearerToken) -> Self {
        Self(token)
    }
}

impl Interceptor for RequireToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        match request.metadata().get("authorization") {
            Some(value) if self.0.admits(value.as_bytes()) => Ok(request),
            Some(_) => Err(Status::unauthenticated("wrong bridge token")),
            None => Err(Status::unauthenticated(
                "missing bridge token (authorization: Bearer …)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> BearerToken {
        BearerToken::new("0123456789abcdef0123456789abcdef\n").unwrap()
    }

    #[test]
    fn a_token_is_long_visible_ascii_and_never_printed() {
        assert_eq!(BearerToken::new("short").unwrap_err(), InvalidToken::TooShort);
        assert_eq!(
            BearerToken::new("has a space in the middle of it").unwrap_err(),
            InvalidToken::NotVisibleAscii
        );
        assert_eq!(format!("{:?}", token()), "BearerToken(***)");
    }

    #[test]
    fn only_the_right_bearer_token_passes() {
        let mut require = RequireToken::new(token());
        let mut attach = AttachToken::new(Some(&token()));
        let request = attach.call(Request::new(())).unwrap();
        assert!(require.call(request).is_ok());

        let missing = require.call(Request::new(())).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        let other = BearerToken::new("fedcba9876543210fedcba9876543210").unwrap();
        let wrong = require
            .call(AttachToken::new(Some(&other)).call(Request::new(())).unwrap())
            .unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        let mut bare = Request::new(());
        bare.metadata_mut()
            .insert("authorization", "0123456789abcdef0123456789abcdef".parse().unwrap());
        assert!(require.call(bare).is_err(), "the Bearer scheme is required");
    }

    #[test]
    fn no_token_attaches_nothing() {
        let request = AttachToken::new(None).call(Request::new(())).unwrap();
        assert!(request.metadata().get("authorization").is_none());
    }
}
