//! The `ferry-scheduler` binary as operators start it. Having this test also makes
//! `cargo test` build the binary, which the end-to-end tests run as a process.

use std::process::Command;

#[test]
fn a_missing_configuration_file_stops_it_with_exit_code_2() {
    let dir = std::env::temp_dir().join("ferry-no-such-dir");
    let missing = dir.join("ferry.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-scheduler"))
        .arg("--config")
        .arg(&missing)
        .env_remove("FERRY_CONFIG")
        .output()
        .expect("run ferry-scheduler");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--config") && stderr.contains("ferry.toml"),
        "the message names the option and the file: {stderr}"
    );
}
