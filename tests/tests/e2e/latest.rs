//! One `latest`: `ferry list`, `restore`, `verify`, `status`, retention's planner
//! and the digest all resolve a source's newest backup through the catalog, so they
//! name the same backup, also when a later backup completed before an earlier one
//! (an urgent job overtaking a queued one does exactly that).

use std::path::Path;
use std::process::{Command, Output};

use chrono::{Duration, TimeZone, Utc};
use ferry_e2e::processes::binary;
use ferry_runtime::{Config, Runtime};
use ferry_storage::layout::object_key;
use ferry_storage::{Catalog, Compression, Engine, Manifest, ManifestFile, ObjectStore};
use ferry_testkit::NatsServer;
use sha2::{Digest, Sha256};

fn ferry(config: &Path, args: &[&str]) -> Output {
    let out = Command::new(binary("ferry"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("FERRY_LOG", "warn")
        .output()
        .expect("run ferry");
    assert!(
        out.status.success(),
        "ferry {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// Stores one object and commits a manifest naming it, as the uploader does.
async fn commit(
    store: &dyn ObjectStore,
    id: &str,
    requested: chrono::DateTime<Utc>,
    completed: chrono::DateTime<Utc>,
) {
    let content = format!("the data of backup {id}").into_bytes();
    let sha = hex::encode(Sha256::digest(&content));
    store
        .put_bytes(&object_key(&sha), content.clone().into(), None)
        .await
        .unwrap();
    let manifest = Manifest {
        format: ferry_storage::manifest::FORMAT_VERSION,
        backup_id: id.to_string(),
        source: "shop".into(),
        engine: Engine::Postgres,
        job_id: format!("job-{id}"),
        server_version: "15".into(),
        tool_version: "pg_dump (PostgreSQL) 15".into(),
        started_at: requested,
        completed_at: completed,
        databases: vec!["shop".into()],
        files: vec![ManifestFile {
            name: "shop/toc.dat".into(),
            object: object_key(&sha),
            size: content.len() as u64,
            sha256: sha,
            compression: Compression::None,
            reused: false,
            stored: None,
        }],
        bytes_total: content.len() as u64,
        bytes_uploaded: content.len() as u64,
        bytes_reused: 0,
        trace_id: None,
        postgres: None,
        mongodb: None,
        locked: false,
    };
    assert!(Catalog::new(store).commit(&manifest).await.unwrap());
}

#[tokio::test]
async fn every_command_names_the_same_latest_backup() {
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let config_path = dir.path().join("ferry.toml");
    let toml = format!(
        r#"
[nats]
url = "{nats}"

[storage]
kind = "fs"
path = "{store}"

[http]
listen = ""

[[sources]]
name = "shop"
engine = "postgres"
url = "postgres://backup@127.0.0.1:1/shop"
retention = {{ keep_last = 2 }}
"#,
        nats = nats.url(),
        store = store_dir.display(),
    );
    std::fs::write(&config_path, &toml).unwrap();
    let config = Config::from_toml(&toml).unwrap();
    // Opened the way every command opens it.
    let store = ferry_runtime::store::open(&config.storage).unwrap();
    let store = store.as_ref();

    // Three jobs requested an hour apart. The newest (`urgent`) overtook the one
    // before it (`queued`) and completed first; `queued` completed last of all.
    let t0 = Utc.with_ymd_and_hms(2026, 11, 30, 8, 0, 0).unwrap();
    let oldest = format!("{}-00000001", t0.format("%Y%m%dT%H%M%SZ"));
    let queued_at = t0 + Duration::hours(1);
    let queued = format!("{}-00000002", queued_at.format("%Y%m%dT%H%M%SZ"));
    let urgent_at = t0 + Duration::hours(2);
    let urgent = format!("{}-00000003", urgent_at.format("%Y%m%dT%H%M%SZ"));
    commit(store, &oldest, t0, t0 + Duration::minutes(5)).await;
    commit(store, &urgent, urgent_at, urgent_at + Duration::minutes(5)).await;
    commit(store, &queued, queued_at, urgent_at + Duration::minutes(30)).await;

    // The catalog's order: the time in the id, newest first.
    let listed = json(&ferry(
        &config_path,
        &["list", "--source", "shop", "--json"],
    ));
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["backup_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [urgent.as_str(), queued.as_str(), oldest.as_str()]);

    let verified = json(&ferry(
        &config_path,
        &["verify", "--source", "shop", "--backup", "latest", "--json"],
    ));
    assert_eq!(verified["backup_id"], urgent.as_str());
    assert_eq!(verified["ok"], true);

    let to_dir = dir.path().join("restored");
    let restored = ferry(
        &config_path,
        &[
            "restore",
            "--source",
            "shop",
            "--backup",
            "latest",
            "--to-dir",
            to_dir.to_str().unwrap(),
        ],
    );
    let said = String::from_utf8_lossy(&restored.stderr);
    assert!(
        said.contains(&format!("restored backup {urgent}")),
        "{said}"
    );
    assert_eq!(
        std::fs::read_to_string(to_dir.join("shop/toc.dat")).unwrap(),
        format!("the data of backup {urgent}")
    );

    // keep_last = 2 keeps the two newest by the same order: `oldest` goes, even
    // though `queued` completed after `urgent`.
    let plan = json(&ferry(
        &config_path,
        &["retention", "plan", "--source", "shop", "--json"],
    ));
    let kept: Vec<&str> = plan["keep"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["backup_id"].as_str().unwrap())
        .collect();
    let deleted: Vec<&str> = plan["delete"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["backup_id"].as_str().unwrap())
        .collect();
    assert_eq!(kept.len(), 2, "{plan}");
    assert!(kept.contains(&urgent.as_str()) && kept.contains(&queued.as_str()));
    assert_eq!(deleted, [oldest.as_str()]);

    let status = json(&ferry(&config_path, &["status", "--json"]));
    let shop = status
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["source"] == "shop")
        .expect("shop in status");
    assert_eq!(
        shop["last_success"]["backup_id"],
        urgent.as_str(),
        "{status}"
    );

    let rt = Runtime::with_client(config, nats.client().await)
        .await
        .unwrap();
    let now = Utc::now();
    let digest = ferry_notifier::build_digest(&rt, now - Duration::days(1), now)
        .await
        .unwrap();
    let shop = digest.sources.iter().find(|s| s.source == "shop").unwrap();
    assert_eq!(shop.newest.as_deref(), Some(urgent.as_str()));
    assert_eq!(shop.oldest.as_deref(), Some(oldest.as_str()));
}
