//! `[retention]`: the retention worker's settings, including the policy of sources
//! that set none (a source's own policy is part of the source, in the runtime).

use std::time::Duration;

use ferry_runtime::Config;
use ferry_runtime::config::{ConfigProblem, RetentionPolicy, Section, SourceConfig};
use serde::{Deserialize, Serialize};

/// `[retention]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Objects younger than this are never collected, so an upload in flight (whose
    /// manifest is not written yet) keeps its objects. Must exceed the longest upload.
    #[serde(with = "humantime_serde")]
    pub gc_grace: Duration,
    /// How often every source's policy is applied and garbage collected, besides
    /// the run after each backup; `0s` turns the periodic sweep off.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// Objects deleted per request while collecting garbage.
    pub delete_batch: usize,
    /// The policy of sources that set no `retention` of their own.
    pub default: RetentionPolicy,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            gc_grace: Duration::from_secs(6 * 3600),
            sweep_interval: Duration::from_secs(3600),
            delete_batch: 1000,
            default: RetentionPolicy::default(),
        }
    }
}

impl RetentionConfig {
    /// The policy that applies to `source`: its own, or the default.
    pub fn policy_for<'a>(&'a self, source: &'a SourceConfig) -> &'a RetentionPolicy {
        if source.retention.is_set() {
            &source.retention
        } else {
            &self.default
        }
    }
}

impl Section for RetentionConfig {
    const NAME: &'static str = "retention";

    fn validate(&self, config: &Config) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        for (field, value, expected) in self.default.problems() {
            problems.push(ConfigProblem::new(
                format!("retention.default.{field}"),
                value,
                expected,
            ));
        }
        if self.delete_batch == 0 || self.delete_batch > 1000 {
            problems.push(ConfigProblem::new(
                "retention.delete_batch",
                self.delete_batch.to_string(),
                "1 to 1000 (S3 deletes at most 1000 keys per request)",
            ));
        }
        // An object younger than gc_grace is never collected; an upload that takes
        // longer than gc_grace could lose objects it reused before its manifest lands.
        if let Some(longest) = config.sources.iter().map(|s| s.timeout).max()
            && self.gc_grace < longest
        {
            problems.push(ConfigProblem::new(
                "retention.gc_grace",
                humantime::format_duration(self.gc_grace).to_string(),
                format!(
                    "at least the longest sources.timeout ({}), so no upload in flight can lose its objects",
                    humantime::format_duration(longest)
                ),
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use ferry_runtime::config::SectionSpec;

    use super::*;

    const SECTIONS: [SectionSpec; 1] = [SectionSpec::of::<RetentionConfig>()];

    #[test]
    fn a_source_without_a_policy_takes_the_default() {
        let config = Config::from_toml_with(
            r#"
[retention]
default = { keep_last = 3 }

[[sources]]
name = "own"
engine = "postgres"
url = "postgres://h/db"
retention = { keep_daily = 7 }

[[sources]]
name = "none"
engine = "postgres"
url = "postgres://h/db"
"#,
            &SECTIONS,
        )
        .unwrap();
        let retention = config.section::<RetentionConfig>().unwrap();
        let own = config.source("own").unwrap();
        assert_eq!(retention.policy_for(own).keep_daily, Some(7));
        let none = config.source("none").unwrap();
        assert_eq!(retention.policy_for(none).keep_last, Some(3));
        assert_eq!(retention.delete_batch, 1000, "defaults fill the rest");
    }

    #[test]
    fn every_retention_problem_names_its_key() {
        let err = Config::from_toml_with(
            r#"
[retention]
gc_grace = "1h"
delete_batch = 5000
default = { keep_last = 0 }

[[sources]]
name = "a"
engine = "postgres"
url = "postgres://h/db"
timeout = "3h"
"#,
            &SECTIONS,
        )
        .unwrap_err();
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "retention.default.keep_last",
                "retention.delete_batch",
                "retention.gc_grace"
            ]
        );
        let text = err.to_string();
        assert!(
            text.contains("at least the longest sources.timeout (3h)"),
            "{text}"
        );
    }
}
