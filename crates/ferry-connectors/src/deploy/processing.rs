//! A channel's configuration → its processing: the [`Pipeline`] (preprocessor, inbound
//! conversion, filters, transformers, encoders) and each destination's response transformer.
//!
//! JavaScript is compiled here, at deploy, into the channel's one [`Scripts`] (its libraries,
//! `configMap` and limits from `[channel.scripts]`), so a syntax error fails `ferry check` with
//! the script's name and line, and a channel without scripts never starts a script runtime.

use std::sync::Arc;

use ferry_config::{ChannelConfig, FilterConfig, ScriptConfig};
use ferry_engine::{
    DestinationProcessing, Encode, Filter, Pipeline, ResponseScript, ScriptStep, TransformStep,
};
use ferry_script::{ScriptKind, ScriptLimits, Scripts, Source};

use super::transforms::{JsSource, StepPlan, channel_transforms, transform_steps};
use super::{DeployError, filter_rule};

/// What a channel does to its messages.
pub(crate) struct Processing {
    /// The source side (its `destinations` are empty).
    pub source: Pipeline,
    /// Per destination, in order: its processing and its response transformer.
    pub destinations: Vec<(DestinationProcessing, Vec<Arc<dyn TransformStep>>)>,
}

/// The channel's scripts, created on the first script that needs them.
struct Js<'a> {
    channel: &'a ChannelConfig,
    scripts: Option<Scripts>,
}

impl Js<'_> {
    fn invalid(&self, connector: &str, message: String) -> DeployError {
        DeployError::Invalid {
            channel: self.channel.name.clone(),
            connector: connector.to_owned(),
            message,
        }
    }

    fn scripts(&mut self) -> Result<Scripts, DeployError> {
        if let Some(s) = &self.scripts {
            return Ok(s.clone());
        }
        let settings = &self.channel.scripts;
        let mut libraries = Vec::with_capacity(settings.libraries.len());
        for path in &settings.libraries {
            let code = std::fs::read_to_string(path).map_err(|e| {
                self.invalid(
                    "scripts",
                    format!("cannot read library {}: {e}", path.display()),
                )
            })?;
            libraries.push(Source::new(path.display().to_string(), code));
        }
        let config_map = settings
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_owned()))
            .collect();
        let limits = ScriptLimits {
            memory_bytes: settings.memory_limit.bytes(),
            time: settings.time_limit.get(),
            ..ScriptLimits::default()
        };
        let scripts = Scripts::new(libraries, config_map, limits, settings.log_phi_at_info)
            .map_err(|e| self.invalid("scripts", e.to_string()))?;
        self.scripts = Some(scripts.clone());
        Ok(scripts)
    }

    fn compile(
        &mut self,
        connector: &str,
        kind: ScriptKind,
        source: JsSource,
    ) -> Result<ScriptStep, DeployError> {
        let scripts = self.scripts()?;
        let name = if source.name == "js_inline" {
            format!("{connector} (inline)")
        } else {
            source.name
        };
        let script = scripts
            .compile(kind, Source::new(name, source.code))
            .map_err(|e| self.invalid(connector, e.to_string()))?;
        Ok(ScriptStep::new(scripts, script))
    }

    /// `js` or `js_inline` as source code.
    fn source(&self, connector: &str, config: &ScriptConfig) -> Result<JsSource, DeployError> {
        match (&config.js, &config.js_inline) {
            (Some(path), None) => Ok(JsSource {
                name: path.display().to_string(),
                code: std::fs::read_to_string(path).map_err(|e| {
                    self.invalid(connector, format!("cannot read {}: {e}", path.display()))
                })?,
            }),
            (None, Some(code)) => Ok(JsSource {
                name: "js_inline".to_owned(),
                code: code.clone(),
            }),
            _ => Err(self.invalid(
                connector,
                "give exactly one of `js` and `js_inline`".to_owned(),
            )),
        }
    }

    /// Steps of a transformer as pipeline steps; a JSON → HL7 template (only ever the first
    /// of the channel's own) is returned apart, as the inbound conversion.
    #[allow(clippy::type_complexity)]
    fn steps(
        &mut self,
        prefix: &str,
        plans: Vec<StepPlan>,
        kind: ScriptKind,
    ) -> Result<
        (
            Option<Arc<dyn ferry_engine::Convert>>,
            Vec<Arc<dyn TransformStep>>,
        ),
        DeployError,
    > {
        let mut inbound: Option<Arc<dyn ferry_engine::Convert>> = None;
        let mut steps: Vec<Arc<dyn TransformStep>> = Vec::with_capacity(plans.len());
        for (i, plan) in plans.into_iter().enumerate() {
            let connector = format!("{prefix}transform {}", i + 1);
            match plan {
                StepPlan::Declarative(step) => steps.push(Arc::new(step)),
                StepPlan::Template(template) => inbound = Some(template),
                StepPlan::Js(source) => {
                    let step = self.compile(&connector, kind, source)?;
                    if kind == ScriptKind::ResponseTransform {
                        steps.push(Arc::new(ResponseScript(step)));
                    } else {
                        steps.push(Arc::new(step));
                    }
                }
            }
        }
        Ok((inbound, steps))
    }

    /// Filters: declarative rules, or a script (`js`/`js_inline`) at the top level.
    fn filters(
        &mut self,
        prefix: &str,
        filters: &[FilterConfig],
    ) -> Result<Vec<Filter>, DeployError> {
        let mut out = Vec::with_capacity(filters.len());
        for (i, f) in filters.iter().enumerate() {
            let connector = format!("{prefix}filter {}", i + 1);
            if f.js.is_some() || f.js_inline.is_some() {
                let others = f.field.is_some()
                    || f.equals.is_some()
                    || f.one_of.is_some()
                    || f.contains.is_some()
                    || f.regex.is_some()
                    || f.exists.is_some()
                    || f.any.is_some()
                    || f.not;
                if others {
                    return Err(self.invalid(
                        &connector,
                        "a script filter takes only `js` or `js_inline` (write any other test, or the negation, in the script)"
                            .to_owned(),
                    ));
                }
                let config = ScriptConfig {
                    js: f.js.clone(),
                    js_inline: f.js_inline.clone(),
                };
                let source = self.source(&connector, &config)?;
                let step = self.compile(&connector, ScriptKind::Filter, source)?;
                out.push(Filter::Step(Arc::new(step)));
                continue;
            }
            let rule = filter_rule(f).map_err(|message| self.invalid(&connector, message))?;
            out.push(Filter::Rule(rule));
        }
        Ok(out)
    }
}

/// Build everything a channel does to its messages (files are read, scripts compiled).
pub(crate) fn processing(channel: &ChannelConfig) -> Result<Processing, DeployError> {
    let transforms = channel_transforms(channel)?;
    let mut js = Js {
        channel,
        scripts: None,
    };
    let preprocessor = match &channel.preprocess {
        None => None,
        Some(config) => {
            let source = js.source("preprocess", config)?;
            let step = js.compile("preprocess", ScriptKind::Preprocessor, source)?;
            Some(Arc::new(step) as Arc<dyn ferry_engine::Preprocess>)
        }
    };
    let filters = js.filters("", &channel.filters)?;
    let (inbound, transform) = js.steps("", transforms.steps, ScriptKind::Transform)?;
    let mut destinations = Vec::with_capacity(channel.destinations.len());
    for (dest, plans) in channel.destinations.iter().zip(transforms.destinations) {
        let prefix = format!("destination {}, ", dest.name());
        let filters = js.filters(&prefix, dest.filters())?;
        let (_, transform) = js.steps(&prefix, plans.steps, ScriptKind::Transform)?;
        let response_plans = transform_steps(
            &channel.name,
            &format!("{prefix}response "),
            dest.response_transforms(),
        )?;
        let (_, response) = js.steps(
            &format!("{prefix}response "),
            response_plans,
            ScriptKind::ResponseTransform,
        )?;
        let encoder: Arc<dyn Encode> = Arc::new(plans.encoder);
        destinations.push((
            DestinationProcessing {
                name: dest.name().to_owned(),
                wait_for_previous: dest.wait_for_previous(),
                filters,
                transform,
                encoder: Some(encoder),
            },
            response,
        ));
    }
    Ok(Processing {
        source: Pipeline {
            channel: channel.name.clone(),
            preprocessor,
            inbound,
            filters,
            transform,
            destinations: Vec::new(),
        },
        destinations,
    })
}
