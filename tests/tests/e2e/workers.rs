//! The worker binaries as operators start them. Every worker starts through
//! `ferry_runtime::process::main`, so one test runs each real binary (replacing one
//! near-identical test binary per worker crate) and checks that a missing
//! configuration file stops it before it connects to anything.

use std::process::Command;

use ferry_e2e::processes::{WORKERS, binary};

#[test]
fn a_missing_configuration_file_stops_every_worker_with_exit_code_2() {
    let missing = std::env::temp_dir()
        .join("ferry-no-such-dir")
        .join("ferry.toml");
    for (name, _, _) in WORKERS {
        let out = Command::new(binary(name))
            .arg("--config")
            .arg(&missing)
            .env_remove("FERRY_CONFIG")
            .output()
            .unwrap_or_else(|e| panic!("run {name}: {e}"));
        assert_eq!(out.status.code(), Some(2), "{name}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--config") && stderr.contains("ferry.toml"),
            "{name}: the message names the option and the file: {stderr}"
        );
    }
}
