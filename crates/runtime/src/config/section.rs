//! The hook through which each service owns its configuration section.
//!
//! The runtime parses only what every process shares. A service's section
//! (`[dumper]`, `[uploader]`, `[[notify]]`, …) is a type in that service's crate that
//! implements [`Section`]; a process names the sections it uses ([`SectionSpec`]) and
//! [`Config::load`](super::Config::load) parses and validates them together with the
//! shared ones, before any connection is opened, reporting every problem at once.
//! A section no process of this binary uses is accepted by name only: the service
//! that owns it checks it when it starts.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use figment::Figment;
use serde::de::DeserializeOwned;

use super::{Config, ConfigError, ConfigProblem};

/// A service's configuration section.
///
/// The type should be `#[serde(deny_unknown_fields, default)]`, so that a key the
/// service does not know is refused, naming it, and a key left out takes its default.
pub trait Section: DeserializeOwned + Default + Send + Sync + 'static {
    /// The top-level key of the section: `dumper` for `[dumper]`, `notify` for
    /// `[[notify]]`. It must be one of [`SERVICE_SECTIONS`].
    const NAME: &'static str;

    /// Every value parsing alone cannot check, keys in full (`dumper.pg_jobs`).
    /// `config` is the shared configuration, for checks against it (retention's
    /// grace period against the longest source timeout).
    fn validate(&self, config: &Config) -> Vec<ConfigProblem> {
        let _ = config;
        Vec::new()
    }
}

/// The top-level keys owned by a service rather than by the runtime. Every process
/// accepts them, so one file serves every binary, while a misspelt section is still
/// refused; `services/ferry`'s tests check this list against the services' sections.
pub const SERVICE_SECTIONS: [&str; 7] = [
    "scheduler",
    "dumper",
    "uploader",
    "retention",
    "notifier",
    "notify",
    "capture",
];

type Parsed = Arc<dyn Any + Send + Sync>;

/// A section a process uses, named at start-up so that it is parsed and validated
/// before any connection opens: `SectionSpec::of::<DumperConfig>()`.
#[derive(Clone, Copy)]
pub struct SectionSpec {
    name: &'static str,
    type_id: fn() -> TypeId,
    parse: fn(&Config) -> Result<Parsed, Vec<ConfigProblem>>,
}

impl SectionSpec {
    /// The spec of section type `T`.
    pub const fn of<T: Section>() -> SectionSpec {
        SectionSpec {
            name: T::NAME,
            type_id: TypeId::of::<T>,
            parse: parse_erased::<T>,
        }
    }

    /// The section's top-level key.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

impl fmt::Debug for SectionSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SectionSpec({})", self.name)
    }
}

fn parse_erased<T: Section>(config: &Config) -> Result<Parsed, Vec<ConfigProblem>> {
    parse::<T>(config).map(|section| Arc::new(section) as Parsed)
}

/// Parses section `T` from the figment the configuration was loaded from (its
/// defaults when absent), without validating it.
fn parse_only<T: Section>(config: &Config) -> Result<T, Vec<ConfigProblem>> {
    match &config.sections.figment {
        Some(figment) if figment.contains(T::NAME) => {
            figment.extract_inner::<T>(T::NAME).map_err(|e| {
                let mut problems = ConfigError::from_figment(e).problems;
                for p in &mut problems {
                    p.key = full_key(T::NAME, &p.key);
                }
                problems
            })
        }
        _ => Ok(T::default()),
    }
}

/// The key as the file spells it (`dumper.concurrency`): figment appends the
/// section's name to the path of an error inside it (`concurrency.dumper`).
fn full_key(section: &str, key: &str) -> String {
    match key.strip_suffix(section) {
        Some("") => section.to_string(),
        Some(inner) if inner.ends_with('.') => format!("{section}.{}", &inner[..inner.len() - 1]),
        _ if key.starts_with(&format!("{section}.")) => key.to_string(),
        _ => format!("{section}.{key}"),
    }
}

/// Parses section `T` and validates it.
fn parse<T: Section>(config: &Config) -> Result<T, Vec<ConfigProblem>> {
    let section = parse_only::<T>(config)?;
    let problems = section.validate(config);
    if problems.is_empty() {
        Ok(section)
    } else {
        Err(problems)
    }
}

/// The service sections of a configuration: where they are read from, and those
/// parsed so far. Clones share what was parsed.
#[derive(Clone, Default)]
pub(crate) struct Sections {
    /// The file and environment the configuration came from; `None` for
    /// `Config::default()`, where every section takes its defaults.
    pub(crate) figment: Option<Figment>,
    parsed: Arc<Mutex<HashMap<TypeId, Parsed>>>,
}

impl fmt::Debug for Sections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parsed = self.parsed.lock().map(|p| p.len()).unwrap_or_default();
        write!(f, "Sections({parsed} parsed)")
    }
}

impl Config {
    /// Parses and validates the sections in `specs`, keeping each for
    /// [`section`](Config::section), and returns every problem found.
    pub(crate) fn parse_sections(&self, specs: &[SectionSpec]) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut seen = Vec::new();
        for spec in specs {
            let type_id = (spec.type_id)();
            if seen.contains(&type_id) {
                // `ferry up` names the sections of every worker; two may share one.
                continue;
            }
            seen.push(type_id);
            match (spec.parse)(self) {
                Ok(parsed) => {
                    self.cache().insert(type_id, parsed);
                }
                Err(found) => problems.extend(found),
            }
        }
        problems
    }

    /// Service section `T`: as validated at start-up, or parsed and validated now when
    /// the process did not name it (a test that builds a configuration by hand).
    pub fn section<T: Section>(&self) -> Result<Arc<T>, ConfigError> {
        if let Some(parsed) = self.cache().get(&TypeId::of::<T>()) {
            return Ok(Arc::clone(parsed)
                .downcast::<T>()
                .expect("the cache holds each type under its own id"));
        }
        let section = Arc::new(parse::<T>(self).map_err(|problems| ConfigError { problems })?);
        self.cache()
            .insert(TypeId::of::<T>(), Arc::clone(&section) as Parsed);
        Ok(section)
    }

    /// Service section `T` as written, parsed but not validated: for tools that read
    /// a file meant for another machine, whose environment holds the variables a
    /// channel's secrets come from.
    pub fn section_unvalidated<T: Section>(&self) -> Result<T, ConfigError> {
        parse_only::<T>(self).map_err(|problems| ConfigError { problems })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<TypeId, Parsed>> {
        // The map is only inserted into; a panic elsewhere cannot leave it half-written.
        self.sections
            .parsed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
