//! Reading secrets named by the configuration: from an environment variable or a
//! file (a Docker or Kubernetes secret). Secrets are `SecretString`, never logged.

use std::path::Path;

use secrecy::SecretString;

/// Where a secret comes from.
#[derive(Debug, Clone, Copy)]
pub enum SecretSource<'a> {
    /// An environment variable.
    Env(&'a str),
    /// A file; a trailing newline is removed.
    File(&'a Path),
}

/// Reads a secret; the error names the variable or file, never the value.
pub fn read_secret(source: SecretSource<'_>) -> Result<SecretString, String> {
    match source {
        SecretSource::Env(var) => std::env::var(var)
            .map(SecretString::from)
            .map_err(|_| format!("environment variable {var} is not set")),
        SecretSource::File(path) => std::fs::read_to_string(path)
            .map(|s| SecretString::from(s.trim_end_matches(['\n', '\r']).to_string()))
            .map_err(|e| format!("cannot read {}: {e}", path.display())),
    }
}
