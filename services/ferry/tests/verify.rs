//! `ferry verify` as an operator runs it: exit codes and the objects it names.

use std::path::Path;
use std::process::{Command, Output};

use ferry_testkit::TestConfig;
use sha2::{Digest, Sha256};

fn ferry(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("FERRY_LOG", "warn")
        .output()
        .expect("run ferry")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A store with one backup of three files, laid out as the uploader writes it.
fn backup_in(store: &Path) -> Vec<(String, std::path::PathBuf)> {
    let mut files = Vec::new();
    let mut objects = Vec::new();
    for (i, content) in ["toc", "table one", "table two"].iter().enumerate() {
        let sha = hex::encode(Sha256::digest(content.as_bytes()));
        let path = store.join("ferry/objects").join(&sha);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        files.push(serde_json::json!({
            "name": format!("orders/{i}.dat"), "object": format!("objects/{sha}"),
            "size": content.len(), "sha256": sha, "compression": "none", "reused": false
        }));
        objects.push((format!("objects/{sha}"), path));
    }
    let manifest = serde_json::json!({
        "format": 1, "backup_id": "20261122T010000Z-abcdef12", "source": "orders",
        "engine": "postgres", "job_id": "j", "server_version": "15", "tool_version": "pg_dump",
        "started_at": "2026-11-22T01:00:00Z", "completed_at": "2026-11-22T01:00:05Z",
        "databases": ["orders"], "files": files, "bytes_total": 21, "bytes_uploaded": 21,
        "bytes_reused": 0
    });
    let key = store.join("ferry/backups/orders/20261122T010000Z-abcdef12.json");
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    std::fs::write(key, serde_json::to_vec(&manifest).unwrap()).unwrap();
    objects
}

#[test]
fn verify_exits_zero_on_a_good_backup_and_names_every_damaged_object() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let objects = backup_in(&store);
    let config = dir.path().join("ferry.toml");
    TestConfig::new().fs_store(&store).write(&config);

    let out = ferry(
        &config,
        &["verify", "--source", "orders", "--backup", "latest"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("intact"),
        "{}",
        text(&out.stdout)
    );

    // One byte changed in one object, another deleted.
    let mut bytes = std::fs::read(&objects[1].1).unwrap();
    bytes[0] ^= 0x20;
    std::fs::write(&objects[1].1, bytes).unwrap();
    std::fs::remove_file(&objects[2].1).unwrap();

    let out = ferry(
        &config,
        &[
            "verify",
            "--source",
            "orders",
            "--backup",
            "20261122T010000Z-abcdef12",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("{}: corrupt", objects[1].0)),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{}: missing", objects[2].0)),
        "{stdout}"
    );
    assert!(
        !stdout.contains(&objects[0].0),
        "the good object is not named: {stdout}"
    );
    assert!(
        text(&out.stderr).contains("2 of 3 objects"),
        "{}",
        text(&out.stderr)
    );

    let out = ferry(&config, &["verify", "--source", "orders", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["problems"].as_array().unwrap().len(), 2);
}
