//! `[[channel.transform]]` and `encode` configuration → engine steps and encoders.
//!
//! Everything a step needs is built here, at deploy time: paths parsed, code tables and
//! templates read and checked, JavaScript files read. So `ferry check` reports a missing
//! file, a bad CSV line, a bad path or a template syntax error as
//! ``channel `c`, transform N: …`` or ``channel `c`, destination X, transform N: …``, and
//! nothing half-configured runs.
//!
//! JavaScript steps are not run by this crate: they come back as [`StepPlan::Js`] with their
//! code, for the script engine to compile. Keeping them in the same ordered list as the
//! declarative steps keeps the order the configuration wrote.

use std::sync::Arc;

use ferry_config::{ChannelConfig, EncodeConfig, TransformConfig};
use ferry_engine::transform::{
    CodeTable, Encoder, FieldPath, Hl7Template, JsonTemplate, Placement, SegmentRef, SetValue,
    Step, segment_id,
};

use super::DeployError;

/// One transform of a channel or destination, ready to run, in configuration order.
#[derive(Debug, Clone)]
pub enum StepPlan {
    /// A declarative step: run it with [`Step::apply`] (or the list with
    /// [`ferry_engine::apply_all`]).
    Declarative(Step),
    /// `template = "…"`: build the HL7 message from the JSON body the source received.
    /// Only ever the first transform of a channel.
    Template(Arc<Hl7Template>),
    /// `js` / `js_inline`: a JavaScript step for the script engine.
    Js(JsSource),
}

/// The code of a JavaScript step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsSource {
    /// Where it came from: the file's path, or `js_inline` for code in the configuration.
    pub name: String,
    /// The script.
    pub code: String,
}

/// What one destination does before sending: its own steps and its encoding.
#[derive(Debug, Clone)]
pub struct DestinationTransforms {
    /// The destination's name.
    pub name: String,
    /// `[[channel.destination.transform]]`, in order.
    pub steps: Vec<StepPlan>,
    /// `encode = …`.
    pub encoder: Encoder,
}

/// The transforms of a channel: the channel's steps, and each destination's (in
/// configuration order).
#[derive(Debug, Clone)]
pub struct ChannelTransforms {
    /// `[[channel.transform]]`, in order.
    pub steps: Vec<StepPlan>,
    /// One entry per `[[channel.destination]]`, in order.
    pub destinations: Vec<DestinationTransforms>,
}

/// Build every transform and encoder of a channel (files are read here).
pub fn channel_transforms(channel: &ChannelConfig) -> Result<ChannelTransforms, DeployError> {
    let steps = transform_steps(&channel.name, "", &channel.transforms)?;
    let destinations = channel
        .destinations
        .iter()
        .map(|d| {
            let prefix = format!("destination {}, ", d.name());
            Ok(DestinationTransforms {
                name: d.name().to_owned(),
                steps: transform_steps(&channel.name, &prefix, d.transforms())?,
                encoder: encoder(d.encode()).map_err(|message| DeployError::Invalid {
                    channel: channel.name.clone(),
                    connector: format!("{prefix}encode"),
                    message,
                })?,
            })
        })
        .collect::<Result<_, DeployError>>()?;
    Ok(ChannelTransforms {
        steps,
        destinations,
    })
}

/// A list of transforms as steps; errors name the channel and `{prefix}transform N`
/// (`prefix` is empty for the channel's own, `destination X, ` for a destination's).
pub fn transform_steps(
    channel: &str,
    prefix: &str,
    transforms: &[TransformConfig],
) -> Result<Vec<StepPlan>, DeployError> {
    transforms
        .iter()
        .enumerate()
        .map(|(i, t)| {
            step_plan(t, i == 0 && prefix.is_empty()).map_err(|message| DeployError::Invalid {
                channel: channel.to_owned(),
                connector: format!("{prefix}transform {}", i + 1),
                message,
            })
        })
        .collect()
}

/// A destination's `encode` as an encoder (a JSON template is read and checked).
pub fn encoder(encode: &EncodeConfig) -> Result<Encoder, String> {
    Ok(match encode {
        EncodeConfig::Hl7 => Encoder::Hl7,
        EncodeConfig::Json => Encoder::Json,
        EncodeConfig::Template(path) => Encoder::Template(Arc::new(JsonTemplate::load(path)?)),
    })
}

const KEYS: &str = "`set`, `copy`, `delete`, `add_segment`, `drop_segment`, `rename_segment`, `map`, `template`, `js`, `js_inline`";

/// One transform table as a step: exactly one key, valid paths, readable files.
/// `first_of_channel`: the table is the first `[[channel.transform]]` (where `template` may
/// stand).
fn step_plan(t: &TransformConfig, first_of_channel: bool) -> Result<StepPlan, String> {
    let given: Vec<&str> = [
        ("set", t.set.is_some()),
        ("copy", t.copy.is_some()),
        ("delete", t.delete.is_some()),
        ("add_segment", t.add_segment.is_some()),
        ("drop_segment", t.drop_segment.is_some()),
        ("rename_segment", t.rename_segment.is_some()),
        ("map", t.map.is_some()),
        ("template", t.template.is_some()),
        ("js", t.js.is_some()),
        ("js_inline", t.js_inline.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    if given.len() != 1 {
        let which = if given.is_empty() {
            "none given".to_owned()
        } else {
            format!("{} given: `{}`", given.len(), given.join("`, `"))
        };
        return Err(format!("a transform has exactly one of {KEYS} ({which})"));
    }
    let path = |key: &str, text: &str| -> Result<FieldPath, String> {
        let p = FieldPath::parse(text).map_err(|e| format!("`{key}`: {e}"))?;
        Ok(p)
    };
    let writable = |key: &str, text: &str| -> Result<FieldPath, String> {
        let p = path(key, text)?;
        if p.path().segment_id() == b"MSH" && p.path().field <= 2 {
            return Err(format!(
                "`{key}`: {text} holds the message's delimiters and cannot be changed"
            ));
        }
        Ok(p)
    };
    let step = if let Some(s) = &t.set {
        let value = match (&s.value, s.null) {
            (Some(v), false) => SetValue::Text(v.clone()),
            (None, true) => SetValue::Null,
            (Some(_), true) => {
                return Err("`set` takes `value` or `null = true`, not both".to_owned());
            }
            (None, false) => {
                return Err("`set` needs a `value` (or `null = true` for the HL7 null)".to_owned());
            }
        };
        Step::Set {
            path: writable("set", &s.field)?,
            value,
        }
    } else if let Some(c) = &t.copy {
        Step::Copy {
            from: path("copy", &c.from)?,
            to: writable("copy", &c.to)?,
        }
    } else if let Some(d) = &t.delete {
        Step::Delete {
            path: writable("delete", &d.field)?,
        }
    } else if let Some(a) = &t.add_segment {
        let placement = match (&a.after, &a.before) {
            (Some(_), Some(_)) => {
                return Err("`add_segment` takes `after` or `before`, not both".to_owned());
            }
            (Some(id), None) => Placement::After(anchor(id)?),
            (None, Some(id)) => {
                if id == "MSH" {
                    return Err("`add_segment`: nothing goes before MSH".to_owned());
                }
                Placement::Before(anchor(id)?)
            }
            (None, None) => Placement::End,
        };
        segment_text(&a.text)?;
        Step::AddSegment {
            text: a.text.clone(),
            placement,
        }
    } else if let Some(d) = &t.drop_segment {
        Step::DropSegment {
            segment: SegmentRef::parse(d).map_err(|e| format!("`drop_segment`: {e}"))?,
        }
    } else if let Some(r) = &t.rename_segment {
        let from = SegmentRef::parse(&r.from).map_err(|e| format!("`rename_segment`: {e}"))?;
        segment_id(&r.to).map_err(|e| format!("`rename_segment`: {e}"))?;
        if r.to == "MSH" {
            return Err("`rename_segment`: no segment can become MSH".to_owned());
        }
        Step::RenameSegment {
            from,
            to: r.to.clone(),
        }
    } else if let Some(m) = &t.map {
        Step::Map {
            path: writable("map", &m.field)?,
            table: Arc::new(CodeTable::load(&m.table)?),
            default: m.default.clone(),
        }
    } else if let Some(file) = &t.template {
        if !first_of_channel {
            return Err(
                "`template` builds the message from the JSON body a source received, so it can only be the first `[[channel.transform]]` (a destination sends JSON with `encode = { template = … }`)"
                    .to_owned(),
            );
        }
        return Ok(StepPlan::Template(Arc::new(Hl7Template::load(file)?)));
    } else if let Some(file) = &t.js {
        let code = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read script {}: {e}", file.display()))?;
        return Ok(StepPlan::Js(JsSource {
            name: file.display().to_string(),
            code,
        }));
    } else {
        let code = t.js_inline.clone().unwrap_or_default();
        if code.trim().is_empty() {
            return Err("`js_inline` is empty".to_owned());
        }
        return Ok(StepPlan::Js(JsSource {
            name: "js_inline".to_owned(),
            code,
        }));
    };
    Ok(StepPlan::Declarative(step))
}

fn anchor(id: &str) -> Result<String, String> {
    segment_id(id).map_err(|e| format!("`add_segment`: {e}"))?;
    Ok(id.to_owned())
}

/// The text of `add_segment`: a segment id, then nothing or a field separator; one line.
fn segment_text(text: &str) -> Result<(), String> {
    let id = text.get(..3).unwrap_or(text);
    segment_id(id).map_err(|e| format!("`add_segment` text: {e}"))?;
    if id == "MSH" {
        return Err("`add_segment` cannot add a second MSH".to_owned());
    }
    if text.contains(['\r', '\n']) {
        return Err("`add_segment` text is one segment, without line breaks".to_owned());
    }
    if let Some(c) = text[3..].chars().next()
        && (c.is_ascii_alphanumeric() || c.is_whitespace())
    {
        return Err(format!(
            "`add_segment` text: `{c}` after the segment id; expected the field separator (like ZPI|1)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
