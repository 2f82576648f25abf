//! What a destination sends: the encoders of `encode = …`.

use std::sync::Arc;

use ferry_hl7::Message;

use super::template::JsonTemplate;

/// How a destination encodes the (transformed) message before sending it.
#[derive(Debug, Clone, Default)]
pub enum Encoder {
    /// The HL7 bytes as they are (`encode = "hl7"`, the default).
    #[default]
    Hl7,
    /// The lossless JSON form of `ferry_hl7::json` (`encode = "json"`): HL7 → JSON → HL7
    /// gives back the same bytes.
    Json,
    /// A JSON template (`encode = { template = "…" }`).
    Template(Arc<JsonTemplate>),
}

impl Encoder {
    /// Encode a message. Errors (a message that does not parse, a template that does not fit
    /// the message) say why without quoting message content.
    pub fn encode(&self, msg_bytes: &[u8]) -> Result<Vec<u8>, String> {
        match self {
            Encoder::Hl7 => Ok(msg_bytes.to_vec()),
            Encoder::Json => {
                let m =
                    Message::parse(msg_bytes).map_err(|e| format!("cannot encode as JSON: {e}"))?;
                Ok(ferry_hl7::json::to_json_string(&m).into_bytes())
            }
            Encoder::Template(t) => {
                let m = Message::parse(msg_bytes)
                    .map_err(|e| format!("cannot encode with a template: {e}"))?;
                t.render(&m).map_err(|e| e.to_string())
            }
        }
    }

    /// The `Content-Type` that fits the encoding (`application/hl7-v2` or `application/json`).
    pub fn content_type(&self) -> &'static str {
        match self {
            Encoder::Hl7 => "application/hl7-v2",
            Encoder::Json | Encoder::Template(_) => "application/json",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADT: &[u8] =
        b"MSH|^~\\&|HIS|GH|||20261125||ADT^A01|1|P|2.5.1\rPID|1||42^^^GH^MR||DOE^JANE\r";

    #[test]
    fn each_encoder_produces_its_form() {
        assert_eq!(Encoder::Hl7.encode(ADT).expect("hl7"), ADT);
        let json = Encoder::Json.encode(ADT).expect("json");
        let back = ferry_hl7::json::from_json_str(std::str::from_utf8(&json).expect("utf-8"))
            .expect("from json");
        assert_eq!(back, ADT, "the JSON form is lossless");
        let t = JsonTemplate::parse(r#"{"mrn":"{{PID-3.1}}","family":"{{PID-5.1}}"}"#, "t.json")
            .expect("template");
        let out = Encoder::Template(Arc::new(t))
            .encode(ADT)
            .expect("template");
        assert_eq!(out, br#"{"mrn":"42","family":"DOE"}"#);
        assert_eq!(Encoder::Hl7.content_type(), "application/hl7-v2");
        assert_eq!(Encoder::Json.content_type(), "application/json");
    }

    #[test]
    fn unparseable_input_is_an_error_for_the_json_forms() {
        let err = Encoder::Json.encode(b"not hl7").expect_err("json");
        assert!(err.starts_with("cannot encode as JSON"), "{err}");
        let t = JsonTemplate::parse("{}", "t.json").expect("template");
        let err = Encoder::Template(Arc::new(t))
            .encode(b"")
            .expect_err("template");
        assert!(err.starts_with("cannot encode with a template"), "{err}");
        assert_eq!(
            Encoder::Hl7.encode(b"raw").expect("hl7 passes bytes"),
            b"raw"
        );
    }
}
