//! `[scheduler]`: the scheduler's settings and their defaults.

use std::time::Duration;

use ferry_runtime::config::Section;
use serde::{Deserialize, Serialize};

/// What the scheduler does about instants it missed while no replica ran.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MisfirePolicy {
    /// Run one job for the latest missed instant within the window.
    #[default]
    RunOnce,
    /// Wait for the next instant.
    Skip,
}

/// `[scheduler]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// Largest JSON job request accepted, in bytes.
    pub max_request_bytes: usize,
    /// Missed instants after downtime: `run_once` (default) or `skip`.
    pub misfire: MisfirePolicy,
    /// How far back `run_once` looks for a missed instant.
    #[serde(with = "humantime_serde")]
    pub misfire_window: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_request_bytes: 64 * 1024,
            misfire: MisfirePolicy::RunOnce,
            misfire_window: Duration::from_secs(3600),
        }
    }
}

/// Every value of `[scheduler]` parses to a usable one: nothing more to check.
impl Section for SchedulerConfig {
    const NAME: &'static str = "scheduler";
}

#[cfg(test)]
mod tests {
    use ferry_runtime::Config;
    use ferry_runtime::config::SectionSpec;

    use super::*;

    #[test]
    fn the_section_parses_with_defaults_and_refuses_unknown_keys() {
        let sections = [SectionSpec::of::<SchedulerConfig>()];
        let config =
            Config::from_toml_with("[scheduler]\nmisfire = \"skip\"\n", &sections).unwrap();
        let scheduler = config.section::<SchedulerConfig>().unwrap();
        assert_eq!(scheduler.misfire, MisfirePolicy::Skip);
        assert_eq!(scheduler.max_request_bytes, 64 * 1024);
        assert_eq!(scheduler.misfire_window, Duration::from_secs(3600));

        let err = Config::from_toml_with("[scheduler]\nmisfire_windw = \"1h\"\n", &sections)
            .unwrap_err()
            .to_string();
        assert!(err.contains("misfire_windw"), "{err}");
    }
}
