//! Typed QUIC handshake failures: quinn reports a TLS refusal as a QUIC error code (`0x100 +
//! alert`) and, for our own side's refusal, rustls' error as text. This turns both back into the
//! crate's [`TlsError`], in the form the h2 path reports, so logs and metrics name the reason the
//! same way on both transports.
//!
//! Invariants:
//! - A peer's alert becomes `TlsError::Handshake(rustls::Error::AlertReceived(alert))`, exactly
//!   what tokio-rustls reports on h2.
//! - Our own refusal is rebuilt from quinn's text only where the text names one error without
//!   doubt: rustls' certificate errors without fields, the "no certificates" and "no protocol"
//!   refusals, and the SPIFFE verifier's own `TlsError`s (identities print as their URI). Any
//!   other text keeps the alert and the text (`rustls::Error::General`), never guessing.
//! - Failures that are not TLS (version mismatch, reset, a timeout) stay untyped
//!   [`QuicError::Handshake`]s.

use std::net::SocketAddr;

use rustls::{AlertDescription, CertificateError};

use super::QuicError;
use crate::core::Identity;
use crate::tls::TlsError;

/// The range of QUIC transport error codes that carry a TLS alert (RFC 9001 §4.8).
const CRYPTO_ERRORS: std::ops::RangeInclusive<u64> = 0x100..=0x1ff;

/// Which side of the handshake refused it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusedBy {
    /// Our TLS stack refused the peer (its certificate, its protocols...).
    Local,
    /// The peer sent a TLS alert.
    Peer,
}

impl std::fmt::Display for RefusedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RefusedBy::Local => "us",
            RefusedBy::Peer => "the peer",
        })
    }
}

/// The typed error for a failed handshake with `peer`.
pub(crate) fn handshake_error(peer: SocketAddr, e: &quinn::ConnectionError) -> QuicError {
    match e {
        quinn::ConnectionError::ConnectionClosed(close) => {
            match alert_of(u64::from(close.error_code)) {
                Some(alert) => QuicError::Tls {
                    peer,
                    by: RefusedBy::Peer,
                    error: Box::new(TlsError::Handshake(rustls::Error::AlertReceived(alert))),
                },
                None => untyped(peer, e),
            }
        }
        quinn::ConnectionError::TransportError(t) => match alert_of(u64::from(t.code)) {
            Some(alert) => QuicError::Tls {
                peer,
                by: RefusedBy::Local,
                error: Box::new(local_refusal(alert, &t.reason)),
            },
            None => untyped(peer, e),
        },
        _ => untyped(peer, e),
    }
}

fn untyped(peer: SocketAddr, e: &quinn::ConnectionError) -> QuicError {
    QuicError::Handshake {
        dst: peer,
        reason: e.to_string(),
    }
}

fn alert_of(code: u64) -> Option<AlertDescription> {
    CRYPTO_ERRORS
        .contains(&code)
        .then(|| AlertDescription::from((code - 0x100) as u8))
}

/// Rebuilds our side's refusal from the alert we sent and rustls' text for it (see the module
/// doc for what is rebuilt).
pub(crate) fn local_refusal(alert: AlertDescription, text: &str) -> TlsError {
    let rebuilt = match text {
        "peer sent no certificates" => {
            Some(TlsError::Handshake(rustls::Error::NoCertificatesPresented))
        }
        "peer doesn't support any known protocol" => {
            Some(TlsError::Handshake(rustls::Error::NoApplicationProtocol))
        }
        _ => text
            .strip_prefix("invalid peer certificate: ")
            .and_then(certificate_refusal),
    };
    rebuilt.unwrap_or_else(|| {
        TlsError::Handshake(rustls::Error::General(format!("{text} (sent {alert:?})")))
    })
}

/// `CertificateError` printed by rustls: unit variants by name, our verifier's refusals as
/// `Other(OtherError(<TlsError debug>))`.
fn certificate_refusal(text: &str) -> Option<TlsError> {
    let unit = match text {
        "BadEncoding" => Some(CertificateError::BadEncoding),
        "Expired" => Some(CertificateError::Expired),
        "NotValidYet" => Some(CertificateError::NotValidYet),
        "Revoked" => Some(CertificateError::Revoked),
        "UnhandledCriticalExtension" => Some(CertificateError::UnhandledCriticalExtension),
        "UnknownIssuer" => Some(CertificateError::UnknownIssuer),
        "UnknownRevocationStatus" => Some(CertificateError::UnknownRevocationStatus),
        "BadSignature" => Some(CertificateError::BadSignature),
        "NotValidForName" => Some(CertificateError::NotValidForName),
        "InvalidPurpose" => Some(CertificateError::InvalidPurpose),
        "ApplicationVerificationFailure" => Some(CertificateError::ApplicationVerificationFailure),
        _ => None,
    };
    if let Some(c) = unit {
        return Some(TlsError::Handshake(rustls::Error::InvalidCertificate(c)));
    }
    let ours = text.strip_prefix("Other(OtherError(")?.strip_suffix("))")?;
    verifier_refusal(ours)
}

/// The SPIFFE verifier's refusals, from their `Debug` form.
fn verifier_refusal(text: &str) -> Option<TlsError> {
    if text == "NoSpiffeIdentity" {
        return Some(TlsError::NoSpiffeIdentity);
    }
    if text == "NoPeerCertificate" {
        return Some(TlsError::NoPeerCertificate);
    }
    if let Some(fields) = text
        .strip_prefix("UnexpectedServerIdentity { presented: ")
        .and_then(|f| f.strip_suffix("] }"))
    {
        let (presented, expected) = fields.split_once(", expected: [")?;
        let expected = expected
            .split(", ")
            .filter(|s| !s.is_empty())
            .map(str::parse::<Identity>)
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        return Some(TlsError::UnexpectedServerIdentity {
            presented: presented.parse().ok()?,
            expected,
        });
    }
    if let Some(fields) = text
        .strip_prefix("TrustDomainMismatch { peer: ")
        .and_then(|f| f.strip_suffix("\" }"))
    {
        let (peer, expected) = fields.split_once(", expected: \"")?;
        return Some(TlsError::TrustDomainMismatch {
            peer: peer.parse().ok()?,
            expected: expected.to_string(),
        });
    }
    None
}
