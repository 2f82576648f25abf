//! Fuzz the HL7 path a network message takes: split a body, parse each message, read header
//! fields and paths, build an ACK and read it back. Any panic is a finding.
#![no_main]

use ferry_hl7::ack::{self, AckCode, ErrorDetail};
use ferry_hl7::{Message, split_messages};
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
        for path in ["MSH-10", "PID-5.1", "PID-3(2).1", "OBX[2]-5.1.2", "MSH-2", "MSH-1"] {
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
});
