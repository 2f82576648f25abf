//! The IHE ATNA form of an audit record: the DICOM PS3.15 A.5 (RFC 3881 descendant)
//! `AuditMessage` XML that an Audit Record Repository receives over syslog (ITI-20).
//!
//! ```xml
//! <?xml version="1.0" encoding="UTF-8"?>
//! <AuditMessage>
//!   <EventIdentification EventActionCode="E" EventDateTime="2026-12-02T05:29:52.322Z" EventOutcomeIndicator="8">
//!     <EventID csd-code="110113" codeSystemName="DCM" originalText="Security Alert"/>
//!     <EventTypeCode csd-code="110126" codeSystemName="DCM" originalText="Node Authentication"/>
//!     <EventOutcomeDescription>invalid peer certificate: Revoked</EventOutcomeDescription>
//!   </EventIdentification>
//!   <ActiveParticipant UserID="system" UserIsRequestor="true" NetworkAccessPointID="192.0.2.7" NetworkAccessPointTypeCode="2"/>
//!   <AuditSourceIdentification AuditSourceID="ferry-node-1">
//!     <AuditSourceTypeCode csd-code="4" codeSystemName="DCM" originalText="Application Server"/>
//!   </AuditSourceIdentification>
//!   <ParticipantObjectIdentification ParticipantObjectID="channel/adt" ParticipantObjectTypeCode="2">
//!     <ParticipantObjectIDTypeCode csd-code="12" codeSystemName="RFC-3881" originalText="URI"/>
//!   </ParticipantObjectIdentification>
//! </AuditMessage>
//! ```
//!
//! - **EventID / EventTypeCode** come from [`AuditAction::atna_event`] (DCM codes, SECURITY.md
//!   §2); **EventActionCode** is R for reading PHI or the audit log, U for reprocessing, D
//!   for deleting, and E (execute) for everything else, queries included (DICOM's choice for
//!   Query events).
//! - **EventOutcomeIndicator**: 0 success; 4 (minor failure, may be retried) for a failed
//!   login; 8 (serious failure, the action was refused or terminated) for every other failure.
//!   The record's `reason` detail, when there is one, is the EventOutcomeDescription.
//! - **ActiveParticipant**: the actor (a user, an API token's name, or `system`) as the
//!   requestor, with the source address (without its port) as NetworkAccessPointID, type 2
//!   (IP address).
//! - **AuditSourceIdentification**: the node that recorded the event.
//! - **ParticipantObjectIdentification**: the target, when there is one (`channel/adt`,
//!   `channel/adt/message/42`: system objects identified by a URI-like path; `user/bob`: a
//!   person identified by a user identifier).
//!
//! Everything the record holds is text from the store, so every value is escaped
//! ([`escape`]): the five markup characters become references, tab/newline/carriage return
//! become character references (attribute values keep them), and characters XML 1.0 forbids
//! (other C0 controls, U+FFFE, U+FFFF) become U+FFFD, so a hostile user name cannot break the
//! document or forge elements.

use std::fmt::Write as _;

use ferry_store::{AuditAction, AuditRecord};

/// The record as an ATNA `AuditMessage` XML document (UTF-8, with an XML declaration).
pub fn audit_message(record: &AuditRecord) -> String {
    let action = record.action();
    let failed = record.outcome != "success";
    let mut x = String::with_capacity(1024);
    x.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<AuditMessage>\n");

    let (event_id, event_type) = action.map_or((110100, None), AuditAction::atna_event);
    let _ = writeln!(
        x,
        "  <EventIdentification EventActionCode=\"{}\" EventDateTime=\"{}\" EventOutcomeIndicator=\"{}\">",
        action.map_or('E', action_code),
        super::timestamp(record.time_ms),
        outcome_indicator(action, failed),
    );
    coded(&mut x, "    ", "EventID", event_id);
    if let Some(code) = event_type {
        coded(&mut x, "    ", "EventTypeCode", code);
    }
    if let Some(reason) = reason(record) {
        let _ = writeln!(
            x,
            "    <EventOutcomeDescription>{}</EventOutcomeDescription>",
            escape(&reason)
        );
    }
    x.push_str("  </EventIdentification>\n");

    let _ = write!(
        x,
        "  <ActiveParticipant UserID=\"{}\" UserIsRequestor=\"true\"",
        escape(&record.actor)
    );
    if let Some(address) = record.source.as_deref().map(network_address) {
        let _ = write!(
            x,
            " NetworkAccessPointID=\"{}\" NetworkAccessPointTypeCode=\"2\"",
            escape(address)
        );
    }
    x.push_str("/>\n");

    let _ = writeln!(
        x,
        "  <AuditSourceIdentification AuditSourceID=\"{}\">",
        escape(&record.node)
    );
    x.push_str(
        "    <AuditSourceTypeCode csd-code=\"4\" codeSystemName=\"DCM\" originalText=\"Application Server\"/>\n",
    );
    x.push_str("  </AuditSourceIdentification>\n");

    if let Some(target) = &record.target {
        // RFC 3881: object type 1 = person, 2 = system object; ID type 11 = user
        // identifier, 12 = URI.
        let (object_type, id_type, id_text) = if target.starts_with("user/") {
            (1, 11, "User Identifier")
        } else {
            (2, 12, "URI")
        };
        let _ = writeln!(
            x,
            "  <ParticipantObjectIdentification ParticipantObjectID=\"{}\" ParticipantObjectTypeCode=\"{object_type}\">",
            escape(target)
        );
        let _ = writeln!(
            x,
            "    <ParticipantObjectIDTypeCode csd-code=\"{id_type}\" codeSystemName=\"RFC-3881\" originalText=\"{id_text}\"/>"
        );
        x.push_str("  </ParticipantObjectIdentification>\n");
    }
    x.push_str("</AuditMessage>\n");
    x
}

/// C(reate), R(ead), U(pdate), D(elete) or E(xecute), per DICOM PS3.15 A.5.3.
fn action_code(action: AuditAction) -> char {
    match action {
        AuditAction::MessageView | AuditAction::MessageExport | AuditAction::AuditView => 'R',
        AuditAction::Reprocess => 'U',
        AuditAction::MessageDelete => 'D',
        _ => 'E',
    }
}

/// 0 success, 4 minor failure (a failed login may be retried), 8 serious failure.
fn outcome_indicator(action: Option<AuditAction>, failed: bool) -> u8 {
    match (failed, action) {
        (false, _) => 0,
        (true, Some(AuditAction::LoginFailed | AuditAction::Login)) => 4,
        (true, _) => 8,
    }
}

/// The `reason` detail, when it is text.
fn reason(record: &AuditRecord) -> Option<String> {
    let details: serde_json::Value = serde_json::from_str(&record.details).ok()?;
    details.get("reason")?.as_str().map(str::to_owned)
}

/// The host part of a source address: `192.0.2.7:51234` → `192.0.2.7`, `[::1]:443` → `::1`;
/// anything else as given.
fn network_address(source: &str) -> &str {
    if let Some(rest) = source.strip_prefix('[')
        && let Some((host, _)) = rest.split_once(']')
    {
        return host;
    }
    match source.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => source,
    }
}

/// `<NAME csd-code="CODE" codeSystemName="DCM" originalText="MEANING"/>`.
fn coded(x: &mut String, indent: &str, name: &str, code: u32) {
    let _ = writeln!(
        x,
        "{indent}<{name} csd-code=\"{code}\" codeSystemName=\"DCM\" originalText=\"{}\"/>",
        meaning(code)
    );
}

/// The DCM code meanings of [`AuditAction::atna_event`]'s codes (DICOM PS3.16 CID 400-403).
fn meaning(code: u32) -> &'static str {
    match code {
        110100 => "Application Activity",
        110101 => "Audit Log Used",
        110106 => "Export",
        110107 => "Import",
        110110 => "Patient Record",
        110112 => "Query",
        110113 => "Security Alert",
        110114 => "User Authentication",
        110120 => "Application Start",
        110121 => "Application Stop",
        110122 => "Login",
        110123 => "Logout",
        110126 => "Node Authentication",
        110128 => "Network Configuration",
        110129 => "Security Configuration",
        110131 => "Software Configuration",
        110132 => "Use of Restricted Function",
        110133 => "Audit Recording Stopped",
        110134 => "Audit Recording Started",
        110136 => "Security Roles Changed",
        110137 => "User Security Attributes Changed",
        _ => "Unknown",
    }
}

/// `text` made safe as XML 1.0 character data or a double-quoted attribute value.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_and_forbidden_characters_are_escaped() {
        assert_eq!(
            escape("a<b>&\"c\"'d'"),
            "a&lt;b&gt;&amp;&quot;c&quot;&apos;d&apos;"
        );
        assert_eq!(escape("tab\there\nnl\r"), "tab&#9;here&#10;nl&#13;");
        assert_eq!(
            escape("nul\u{0}bell\u{7}\u{FFFF}"),
            "nul\u{FFFD}bell\u{FFFD}\u{FFFD}"
        );
        assert_eq!(escape("Müller 日本"), "Müller 日本");
    }

    #[test]
    fn network_addresses_lose_their_port() {
        assert_eq!(network_address("192.0.2.7:51234"), "192.0.2.7");
        assert_eq!(network_address("[::1]:443"), "::1");
        assert_eq!(network_address("::1"), "::1");
        assert_eq!(network_address("10.0.0.1"), "10.0.0.1");
        assert_eq!(network_address("host:name"), "host:name");
    }

    #[test]
    fn every_action_has_a_named_code() {
        for action in AuditAction::ALL {
            let (id, kind) = action.atna_event();
            assert_ne!(meaning(id), "Unknown", "{action}");
            if let Some(kind) = kind {
                assert_ne!(meaning(kind), "Unknown", "{action}");
            }
        }
    }
}
