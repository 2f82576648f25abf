//! `ReloadingCert`: a changed pair is swapped in, an unchanged one is not re-read, a broken
//! or half-replaced pair is refused and the previous certificate kept.

use ferry_testkit::TestPki;
use ferry_tls::ReloadingCert;

#[test]
fn reload_swaps_a_good_pair_and_keeps_the_old_one_on_failure() {
    let pki = TestPki::new("reload unit");
    let first = pki.server(&["localhost"]);
    let second = pki.server(&["localhost"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("s.pem"), dir.path().join("s.key"));
    std::fs::copy(&first.cert, &cert).expect("copy");
    std::fs::copy(&first.key, &key).expect("copy");
    let reloading = ReloadingCert::load(&cert, &key).expect("load");
    let der = |p: &std::path::Path| ferry_tls::load_certs(p).expect("certs")[0].clone();
    assert_eq!(reloading.chain()[0], der(&first.cert));
    assert!(!reloading.reload_if_changed().expect("unchanged"));

    // Half-way: the new key with the old certificate is a mismatch, refused.
    std::fs::copy(&second.key, &key).expect("copy");
    let error = reloading.reload_if_changed().expect_err("mismatch");
    assert!(error.to_string().contains("does not match"), "{error}");
    assert_eq!(reloading.chain()[0], der(&first.cert), "old one kept");
    // Complete: taken.
    std::fs::copy(&second.cert, &cert).expect("copy");
    assert!(reloading.reload_if_changed().expect("reloaded"));
    assert_eq!(reloading.chain()[0], der(&second.cert));

    std::fs::write(&cert, "garbage, longer than before to change the size").expect("write");
    assert!(reloading.reload_if_changed().is_err());
    assert_eq!(reloading.chain()[0], der(&second.cert), "still the second");
}
