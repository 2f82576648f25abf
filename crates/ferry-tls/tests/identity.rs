//! Identities read from real certificates made by `ferry_testkit`.

use ferry_testkit::TestPki;
use ferry_tls::{PeerIdentity, identity_allowed, load_certs, not_after, peer_identity};

fn identity_of(path: &std::path::Path) -> PeerIdentity {
    let certs = load_certs(path).expect("certs");
    peer_identity(&certs[0]).expect("parsable certificate")
}

#[test]
fn server_sans_are_detected_as_dns_or_ip() {
    let pki = TestPki::new("ids");
    let files = pki.server(&["localhost", "127.0.0.1", "::1"]);
    let id = identity_of(&files.cert);
    assert_eq!(id.common_name.as_deref(), Some("localhost"));
    assert_eq!(id.sans, vec!["localhost", "127.0.0.1", "::1"]);
    assert_eq!(
        id.to_string(),
        "CN=localhost, SAN=[localhost, 127.0.0.1, ::1]"
    );
}

#[test]
fn client_sans_of_every_kind() {
    let pki = TestPki::new("ids");
    let files = pki.client(
        "his01",
        &[
            "his01.hospital.local",
            "10.0.0.5",
            "interfaces@hospital.local",
            "spiffe://hospital/his01",
        ],
    );
    let certs = load_certs(&files.cert).expect("certs");
    let id = peer_identity(&certs[0]).expect("identity");
    assert_eq!(
        id.to_string(),
        "CN=his01, SAN=[his01.hospital.local, 10.0.0.5, interfaces@hospital.local, \
         spiffe://hospital/his01]"
    );
    assert!(identity_allowed(&certs[0], &["his01"]));
    assert!(identity_allowed(
        &certs[0],
        &["nobody", "HIS01.HOSPITAL.LOCAL"]
    ));
    assert!(identity_allowed(&certs[0], &["10.0.0.5"]));
    assert!(!identity_allowed(&certs[0], &["his02", "10.0.0.6"]));
    assert!(!identity_allowed::<&str>(&certs[0], &[]));
}

#[test]
fn expiry_dates() {
    let pki = TestPki::new("ids");
    let current = load_certs(pki.client("a", &[]).cert).expect("certs");
    let expired = load_certs(pki.expired_client("b").cert).expect("certs");
    // 2100-01-01 and 2001-01-01, midnight UTC.
    assert_eq!(not_after(&current[0]), Some(4_102_444_800));
    assert_eq!(not_after(&expired[0]), Some(978_307_200));
}
