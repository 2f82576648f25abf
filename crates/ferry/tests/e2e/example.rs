//! `examples/hospital-bridge` runs as documented: both flows, end to end. Certificates are made
//! with rcgen under the names `make-certs.sh` uses, and the fixed ports are swapped for free
//! ones so the test can run beside others.

use crate::common;

use std::time::Duration;

use common::{Ferry, free_port};
use ferry_connectors::mllp::{MllpConnection, MllpEndpoint};
use ferry_testkit::TestPki;

const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/hospital-bridge"
);

#[tokio::test(flavor = "multi_thread")]
async fn hospital_bridge_example_runs_both_flows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new("example");
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).expect("certs");
    std::fs::copy(pki.ca_cert_path(), certs.join("ca.pem")).expect("ca");
    for (name, files) in [
        ("ferry", pki.server(&["localhost", "127.0.0.1"])),
        ("his", pki.client("his.hospital.local", &[])),
        ("bridge", pki.client("bridge.hospital.local", &[])),
        ("scheduler", pki.client("scheduler.vendor.example", &[])),
    ] {
        std::fs::copy(&files.cert, certs.join(format!("{name}.pem"))).expect("cert");
        std::fs::copy(&files.key, certs.join(format!("{name}.key"))).expect("key");
    }
    let mut config = std::fs::read_to_string(format!("{EXAMPLE}/ferry.toml")).expect("example");
    for fixed in ["2575", "8443", "8444", "2576", "8480"] {
        let port = free_port();
        config = config
            .replace(&format!(":{fixed}\""), &format!(":{port}\""))
            .replace(&format!(":{fixed}/"), &format!(":{port}/"));
    }
    std::fs::write(dir.path().join("ferry.toml"), &config).expect("config");
    let ferry = Ferry::start(
        &dir.path().join("ferry.toml"),
        &[("CLOUD_TOKEN", "demo-token")],
    );

    // Flow 1 as the README does it with `ferry send` (here through the same client library).
    let adt = std::fs::read(format!("{EXAMPLE}/messages/adt-a01.hl7")).expect("adt");
    let tls = ferry_tls::client_config(&ferry_tls::ClientTlsSettings {
        ca: Some(certs.join("ca.pem")),
        cert: Some(certs.join("his.pem")),
        key: Some(certs.join("his.key")),
    })
    .expect("tls");
    let endpoint = MllpEndpoint {
        address: ferry.listener("adt-to-cloud").to_string(),
        tls: Some((tls, ferry_tls::server_name("localhost").expect("name"))),
        connect_timeout: Duration::from_secs(5),
        max_frame_bytes: 1 << 20,
    };
    let mut conn = MllpConnection::connect(&endpoint).await.expect("connect");
    let ack = conn
        .exchange(&adt, Duration::from_secs(10))
        .await
        .expect("ack");
    let ack = ferry_hl7::ack::parse_ack(&ack).expect("parse");
    assert_eq!(
        (ack.code.as_str(), ack.control_id.as_str()),
        ("AA", "ADT0001")
    );
    assert_eq!(
        ferry.wait_files(&dir.path().join("out/cloud"), 1).remove(0),
        adt,
        "{}",
        ferry.output()
    );

    // Flow 2 as the README does it with curl.
    let siu = std::fs::read(format!("{EXAMPLE}/messages/siu-s12.hl7")).expect("siu");
    let identity = [
        std::fs::read(certs.join("scheduler.pem")).expect("pem"),
        std::fs::read(certs.join("scheduler.key")).expect("key"),
    ]
    .concat();
    let client = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(certs.join("ca.pem")).expect("ca"))
                .expect("ca cert"),
        )
        .identity(reqwest::Identity::from_pem(&identity).expect("identity"))
        .build()
        .expect("client");
    let response = client
        .post(format!(
            "https://localhost:{}/hl7/siu",
            ferry.listener("appointments-to-his").port()
        ))
        .header("content-type", "application/hl7-v2")
        .body(siu.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        ferry.wait_files(&dir.path().join("out/his"), 1).remove(0),
        siu,
        "{}",
        ferry.output()
    );
}
