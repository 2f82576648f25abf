//! The client-certificate verifier of mTLS listeners: webpki chain verification, then the
//! `allowed_clients` allow-list, both inside the handshake.
//!
//! rustls asks a [`ClientCertVerifier`] whether to accept the client's certificate while the
//! handshake is still running. [`AllowListVerifier`] first delegates to rustls'
//! [`WebPkiClientVerifier`] (chain to `client_ca`, validity dates, key usage, signatures) and
//! only if that succeeds checks the end-entity certificate's CN and SANs against the list. A
//! refused client therefore gets a TLS alert and the connection closes before the server reads
//! a single application byte: an unauthorized peer never reaches the MLLP or HTTP parser.
//!
//! Every refusal is logged at WARN with the identity the client presented (CN and SANs, never
//! key material), which is what an operator needs to tell a misconfigured partner from an
//! intruder.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::UnixTime;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::CertificateDer;

use crate::identity::{ClientNotAllowed, Names};

/// webpki verification plus an optional allow-list of client identities.
#[derive(Debug)]
pub(crate) struct AllowListVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    /// `None`: any client certificate from the CA is accepted.
    allowed: Option<Vec<String>>,
}

impl AllowListVerifier {
    pub(crate) fn new(inner: Arc<dyn ClientCertVerifier>, allowed: Option<Vec<String>>) -> Self {
        AllowListVerifier { inner, allowed }
    }
}

fn presented(cert: &CertificateDer<'_>) -> String {
    Names::parse(cert)
        .map(|names| names.to_identity().to_string())
        .unwrap_or_else(|| "(unparsable certificate)".to_owned())
}

impl ClientCertVerifier for AllowListVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = match self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            Ok(verified) => verified,
            Err(error) => {
                tracing::warn!(
                    identity = %presented(end_entity),
                    %error,
                    "TLS client certificate rejected"
                );
                return Err(error);
            }
        };
        let Some(allowed) = &self.allowed else {
            return Ok(verified);
        };
        let names = Names::parse(end_entity);
        if names.as_ref().is_some_and(|n| n.allowed(allowed)) {
            return Ok(verified);
        }
        let identity = names.map(|n| n.to_identity()).unwrap_or_default();
        tracing::warn!(
            identity = %identity,
            "TLS client certificate is valid but not in allowed_clients; handshake refused"
        );
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            rustls::OtherError(Arc::new(ClientNotAllowed { identity })),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
