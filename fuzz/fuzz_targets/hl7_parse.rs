//! Fuzz the HL7 path a network message takes: split a body, parse each message, read header
//! fields and paths, build an ACK and read it back; then the toolkit's other entry points with
//! their invariants: the JSON form gives back the same bytes, an edit leaves a message that
//! parses and reads back the value set, batch envelopes never panic. Any panic is a finding.
#![no_main]

use ferry_hl7::ack::{self, AckCode, ErrorDetail};
use ferry_hl7::{Message, MessageBuf, json, parse_batch, split_messages};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for chunk in split_messages(data) {
        let Ok(message) = Message::parse(chunk) else {
            continue;
        };
        let _ = (
            message.control_id(),
            message.message_type(),
            message.trigger_event(),
            message.version(),
            message.accept_ack_type(),
            message.charset(),
        );
        for path in [
            "MSH-10",
            "PID-5.1",
            "PID-3(2).1",
            "OBX[2]-5.1.2",
            "MSH-2",
            "MSH-1",
        ] {
            let _ = message.get_str(path);
        }
        for segment in message.segments() {
            for n in 0..segment.field_count().min(64) + 1 {
                let _ = segment.field(n);
            }
        }
        for code in [AckCode::AA, AckCode::AR] {
            let detail = ErrorDetail::segment_sequence("fuzz | reason ^ with & delimiters ~");
            let built = ack::build_ack(&message, code, Some("t|e^x~t"), Some(&detail));
            // An ACK Ferry builds must always read back as an ACK answering the message.
            let summary = ack::parse_ack(&built).expect("Ferry's own ACK must parse");
            assert_eq!(summary.code, code);
        }
    }
    let _ = ack::parse_ack(data);
    let _ = parse_batch(data);
    if let Ok(message) = Message::parse(data) {
        let back = json::from_json(&json::to_json(&message)).expect("JSON of a parsed message");
        assert_eq!(back, data, "JSON round trip must be byte-exact");
        let mut buf = MessageBuf::from_message(&message);
        for (path, value) in [("PID-5.1", "X|Y"), ("OBX[2]-5(2).3.1", "v"), ("ZZZ-3", "z")] {
            if buf.set(path, value).is_ok() {
                let got = buf
                    .message()
                    .get_str(path)
                    .ok()
                    .flatten()
                    .map(|t| t.into_owned());
                assert_eq!(got.as_deref(), Some(value), "{path}");
                assert!(MessageBuf::parse(buf.as_bytes().to_vec()).is_ok());
            }
        }
        if buf.insert_repetition("PID-3(2)", "r").is_ok() {
            let got = buf
                .message()
                .get_str("PID-3(2)")
                .ok()
                .flatten()
                .map(|t| t.into_owned());
            assert_eq!(got.as_deref(), Some("r"), "inserted repetition");
        }
        if buf.set_raw("PV1-3", b"A^B&C~D").is_ok() {
            assert!(MessageBuf::parse(buf.as_bytes().to_vec()).is_ok());
        }
        let _ = buf.delete("PID-3(2)");
        let _ = ferry_hl7::validate::validate(&message);
        let _ = ferry_hl7::validate::groups(&message);
        let _ = ferry_hl7::charset::message_to_utf8(
            data,
            &ferry_hl7::charset::CharsetPolicy::default(),
        );
        for path in ["PID-5", "PID-3", "OBX-3", "MSH-7"] {
            let _ = (
                message.xpn(path),
                message.cx(path),
                message.cwe(path),
                message.dtm(path),
            );
        }
        let _ = buf.remove_segment("OBX", 1);
        assert!(Message::parse(buf.as_bytes()).is_ok());
    }
});
