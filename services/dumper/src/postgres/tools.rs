//! Finding a `pg_dump` that can dump the server: the same major version or newer.
//! An older one fails (or, worse, misses objects), so it is refused up front with
//! both versions named.

use std::path::{Path, PathBuf};

use ferry_proto::reason;
use ferry_runtime::HandlerError;

/// A located set of client tools (pg_dump, pg_dumpall, pg_restore live together).
#[derive(Debug, Clone)]
pub struct Toolset {
    /// The directory holding them.
    pub bin_dir: PathBuf,
    /// `pg_dump --version`, e.g. "pg_dump (PostgreSQL) 15.19".
    pub version: String,
    /// Its major version, e.g. 15.
    pub major: u32,
}

impl Toolset {
    /// The path of tool `name` in this set.
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }
}

/// Directories searched when `dumper.pg_bin_dir` is unset: the Debian/Ubuntu,
/// RHEL (PGDG) and Homebrew layouts, then PATH.
fn standard_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for (parent, prefix, suffix) in [
        ("/usr/lib/postgresql", "", "bin"),
        ("/usr", "pgsql-", "bin"),
        ("/opt/homebrew/opt", "postgresql@", "bin"),
        ("/usr/local/opt", "postgresql@", "bin"),
    ] {
        if let Ok(entries) = std::fs::read_dir(parent) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(prefix) {
                    dirs.push(entry.path().join(suffix));
                }
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs
}

/// The major version in `pg_dump --version` output ("pg_dump (PostgreSQL) 15.19
/// (Debian 15.19-1)" gives 15; "9.6.24" gives 9).
pub fn major_of(version: &str) -> Option<u32> {
    let number = version
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
    number.split('.').next()?.parse().ok()
}

async fn probe(dir: &Path, tool: &str) -> Option<Toolset> {
    let binary = dir.join(tool);
    if !binary.is_file() {
        return None;
    }
    let out = tokio::process::Command::new(&binary)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .ok()?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let major = major_of(&version)?;
    Some(Toolset {
        bin_dir: dir.to_path_buf(),
        version,
        major,
    })
}

/// Picks the tools for a server of major version `server_major` (`server` is its
/// full version, for messages). With `configured` set only that directory counts:
/// an operator who named a directory gets it or a clear error, never a surprise.
/// Otherwise the closest major version that is not older than the server wins.
pub async fn find(
    configured: Option<&Path>,
    server_major: u32,
    server: &str,
) -> Result<Toolset, HandlerError> {
    find_tool(configured, "pg_dump", server_major, server).await
}

/// [`find`] for another client tool (`pg_basebackup`): the closest major version
/// not older than the server's.
pub async fn find_tool(
    configured: Option<&Path>,
    tool: &str,
    server_major: u32,
    server: &str,
) -> Result<Toolset, HandlerError> {
    let candidates = match configured {
        Some(dir) => vec![dir.to_path_buf()],
        None => standard_dirs(),
    };
    let mut found = Vec::new();
    for dir in &candidates {
        if let Some(t) = probe(dir, tool).await {
            found.push(t);
        }
    }
    let best = found
        .iter()
        .filter(|t| t.major >= server_major)
        .min_by_key(|t| t.major)
        .cloned();
    if let Some(best) = best {
        return Ok(best);
    }
    let newest = found.iter().max_by_key(|t| t.major);
    let place = match configured {
        Some(dir) => format!("dumper.pg_bin_dir ({})", dir.display()),
        None => "the standard install paths and PATH".to_string(),
    };
    Err(match newest {
        Some(old) => HandlerError::permanent(
            reason::DUMP_TOOL_TOO_OLD,
            format!(
                "the server runs PostgreSQL {server} but the newest {tool} in {place} is {} ({}); install the PostgreSQL {server_major} (or newer) client tools or point dumper.pg_bin_dir at them",
                old.version,
                old.bin_dir.display()
            ),
        ),
        None => HandlerError::permanent(
            reason::DUMP_TOOL_MISSING,
            format!(
                "no {tool} found in {place}; install the PostgreSQL {server_major} client tools or set dumper.pg_bin_dir"
            ),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_versions_are_read_from_version_lines() {
        assert_eq!(major_of("pg_dump (PostgreSQL) 15.19"), Some(15));
        assert_eq!(
            major_of("pg_dump (PostgreSQL) 16.4 (Ubuntu 16.4-1.pgdg22.04+1)"),
            Some(16)
        );
        assert_eq!(major_of("pg_dump (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(major_of("garbage"), None);
    }
}
