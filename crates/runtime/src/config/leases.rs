//! `[leases]`: the per-source leases that keep two jobs of one source apart. Shared
//! because the dumper takes a source's lease and retention takes the same one.

use std::time::Duration;

use figment::Figment;
use serde::{Deserialize, Serialize};

use super::ConfigProblem;

/// `[leases]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LeasesConfig {
    /// How long a source's lease lives without renewal (renewed every third of it
    /// while a job runs): how soon a crashed worker's source is free again. It is the
    /// lease bucket's max age, set when the bucket is first created. `dumper.lease_ttl`
    /// is its older name, still read when this is not set.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for LeasesConfig {
    fn default() -> Self {
        LeasesConfig {
            ttl: Duration::from_secs(60),
        }
    }
}

/// The older name of `leases.ttl`, from when only the dumper took leases.
const OLDER_NAME: &str = "dumper.lease_ttl";

impl LeasesConfig {
    /// Applies `dumper.lease_ttl` when `[leases] ttl` is not set, so no file written
    /// for an older Ferry changes meaning; returns the problems with it. Every process
    /// reads it here, since retention takes leases too but never parses `[dumper]`.
    pub(super) fn resolve_older_name(&mut self, figment: &Figment) -> Vec<ConfigProblem> {
        if !figment.contains(OLDER_NAME) {
            return Vec::new();
        }
        let older = match figment.extract_inner::<humantime_serde::Serde<Duration>>(OLDER_NAME) {
            Ok(d) => d.into_inner(),
            Err(e) => return super::ConfigError::from_figment(e).problems,
        };
        if !figment.contains("leases.ttl") {
            self.ttl = older;
            return Vec::new();
        }
        if older == self.ttl {
            return Vec::new();
        }
        vec![ConfigProblem::new(
            OLDER_NAME,
            humantime::format_duration(older).to_string(),
            format!(
                "the same as leases.ttl ({}), or left out: it is leases.ttl's older name",
                humantime::format_duration(self.ttl)
            ),
        )]
    }
}
