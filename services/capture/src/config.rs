//! `[capture]`: the capture worker's settings. What is captured, and how segments
//! are cut, is each source's `pitr = { … }` (in the shared source configuration,
//! because the CLI's restore and the scheduler read it too).

use std::path::PathBuf;
use std::time::Duration;

use ferry_runtime::Config;
use ferry_runtime::config::{ConfigProblem, Section};
use serde::{Deserialize, Serialize};

/// `[capture]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    /// How often a replica looks for sources with capture on that no replica
    /// captures (after a replica died, or when a source is added). A dead
    /// replica's sources are taken over within `leases.ttl` plus this.
    #[serde(with = "humantime_serde")]
    pub poll: Duration,
    /// Where a segment is written, compressed and hashed before it is stored
    /// (default: `capture/` under `spool.path`). Holds one file per source being
    /// captured, at most `segment_max` before compression.
    pub work_dir: Option<PathBuf>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            poll: Duration::from_secs(5),
            work_dir: None,
        }
    }
}

impl CaptureConfig {
    /// The working directory, resolved against the shared configuration.
    pub fn work_dir(&self, config: &Config) -> PathBuf {
        self.work_dir
            .clone()
            .unwrap_or_else(|| config.spool.path.join("capture"))
    }
}

impl Section for CaptureConfig {
    const NAME: &'static str = "capture";

    fn validate(&self, _config: &Config) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        if self.poll < Duration::from_millis(100) || self.poll > Duration::from_secs(300) {
            problems.push(ConfigProblem::new(
                "capture.poll",
                humantime::format_duration(self.poll).to_string(),
                "a duration from 100ms to 5m, such as 5s",
            ));
        }
        problems
    }
}
