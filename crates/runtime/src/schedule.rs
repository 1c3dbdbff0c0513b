//! Cron expressions and time zones, parsed the same way at validation and at run time.

use croner::Cron;

/// Parses a cron expression: 5 fields, or 6 with seconds first.
pub fn parse_cron(expr: &str) -> Result<Cron, croner::errors::CronError> {
    Cron::new(expr).with_seconds_optional().parse()
}

/// Parses an IANA time zone name.
pub fn parse_timezone(name: &str) -> Result<chrono_tz::Tz, chrono_tz::ParseError> {
    name.parse()
}
