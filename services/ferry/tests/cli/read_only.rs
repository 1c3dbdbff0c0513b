//! The read-only commands as a NATS user that may only read: an admin runs the
//! fleet (declares the streams, adds a registry source, backs up), and a reader whose
//! permissions allow looking (stream and consumer info, the ordered consumers and
//! direct gets that reading a bucket or a stream takes) but no stream changes, no
//! publish on `ferry.v1.>` and no KV put runs `list`, `status`, `sources list`,
//! `retention plan` and `verify`. A writing command fails naming the permission.

use std::path::Path;
use std::process::{Command, Stdio};

use ferry_testkit::{NatsLogin, NatsServer, PgCluster};

use super::{Running, ferry, text};

/// Two users: `admin` may do anything, `reader` only what the read-only commands
/// need. Everything not allowed is denied; the deny list names what matters.
fn authorization(admin: &str, reader: &str) -> String {
    format!(
        r#"
authorization {{
  users = [
    {{ user: admin, password: "{admin}" }}
    {{
      user: reader
      password: "{reader}"
      permissions: {{
        publish: {{
          allow: [
            "$JS.API.INFO",
            "$JS.API.STREAM.INFO.>",
            "$JS.API.CONSUMER.INFO.>",
            "$JS.API.CONSUMER.CREATE.KV_ferry-sources",
            "$JS.API.CONSUMER.CREATE.KV_ferry-sources.>",
            "$JS.API.CONSUMER.DELETE.KV_ferry-sources.>",
            "$JS.API.DIRECT.GET.>",
            "$JS.API.STREAM.MSG.GET.>",
            "$JS.FC.>",
          ]
          deny: [
            "$JS.API.STREAM.CREATE.>",
            "$JS.API.STREAM.UPDATE.>",
            "$JS.API.STREAM.DELETE.>",
            "ferry.v1.>",
            "$KV.>",
          ]
        }}
        subscribe: {{ allow: ["_INBOX.>"] }}
      }}
    }}
  ]
}}
"#
    )
}

/// A configuration for `user`, whose password is in `password_file`.
fn config(
    dir: &Path,
    nats: &str,
    user: &str,
    password_file: &Path,
    pg: &PgCluster,
    db: &str,
) -> String {
    format!(
        r#"
[nats]
url = "{nats}"
username = "{user}"
password_file = "{pw}"
[spool]
path = "{spool}"
[storage]
path = "{store}"
[http]
listen = ""
[dumper]
pg_bin_dir = "{bin}"

[[sources]]
name = "orders"
engine = "postgres"
url = "{url}"
password_file = "{pg_pw}"
schedule = "0 3 * * *"
"#,
        pw = password_file.display(),
        spool = dir.join("spool").display(),
        store = dir.join("store").display(),
        bin = pg.bin_dir.display(),
        url = pg.url_without_password(db),
        pg_pw = dir.join("pg_pw").display(),
    )
}

/// Every stream of the server (KV buckets are streams `KV_<bucket>`), by name.
async fn stream_names(js: &async_nats::jetstream::Context) -> Vec<String> {
    use futures::TryStreamExt;
    let mut names: Vec<String> = js.stream_names().try_collect().await.unwrap();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_nats_user_lists_and_shows_status_and_cannot_write() {
    let (admin_pw, reader_pw) = (
        ferry_testkit::unique_name("admin"),
        ferry_testkit::unique_name("reader"),
    );
    let admin = NatsLogin {
        user: "admin".into(),
        password: admin_pw.clone(),
    };
    let nats =
        NatsServer::start_with_config(&authorization(&admin_pw, &reader_pw), Some(admin)).await;
    let pg = PgCluster::from_env();
    let db = pg.create_database("ferry_ro").await;
    db.connect()
        .await
        .batch_execute("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 100);")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("pg_pw"), &pg.password).unwrap();
    std::fs::write(d.join("admin_pw"), format!("{admin_pw}\n")).unwrap();
    std::fs::write(d.join("reader_pw"), format!("{reader_pw}\n")).unwrap();
    let (admin_config, reader_config, offline_config) = (
        d.join("admin.toml"),
        d.join("reader.toml"),
        d.join("offline.toml"),
    );
    let admin_text = config(d, &nats.url(), "admin", &d.join("admin_pw"), &pg, &db.name);
    std::fs::write(&admin_config, &admin_text).unwrap();
    let reader_text = config(
        d,
        &nats.url(),
        "reader",
        &d.join("reader_pw"),
        &pg,
        &db.name,
    );
    std::fs::write(&reader_config, &reader_text).unwrap();
    // Nothing listens on port 1: a command that connected would fail.
    std::fs::write(
        &offline_config,
        reader_text.replace(&nats.url(), "nats://127.0.0.1:1"),
    )
    .unwrap();
    let run = |config: &Path, args: &[&str]| {
        let (config, args) = (
            config.to_path_buf(),
            args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        );
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ferry(&config, &args)
        })
    };

    // The admin sets up the fleet: workers (which declare everything), a registry
    // source, a backup.
    let up = Running(
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("--config")
            .arg(&admin_config)
            .arg("up")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let live = [
        "sources",
        "add",
        "--name",
        "live",
        "--engine",
        "postgres",
        "--url",
        "postgres://backup@db2/live",
        "--schedule",
        "30 2 * * *",
        "--keep-last",
        "3",
    ];
    let added = run(&admin_config, &live).await.unwrap();
    assert_eq!(added.status.code(), Some(0), "{}", text(&added.stderr));
    let backup = run(
        &admin_config,
        &[
            "backup",
            "now",
            "--source",
            "orders",
            "--wait",
            "--timeout",
            "90s",
        ],
    )
    .await
    .unwrap();
    assert_eq!(backup.status.code(), Some(0), "{}", text(&backup.stderr));
    let backup_id = text(&backup.stdout).trim().to_string();

    // The reader may not write: the registry edit fails and says why.
    let sneaky = live.map(|a| if a == "live" { "sneaky" } else { a });
    let refused = run(&reader_config, &sneaky).await.unwrap();
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("Permissions Violation")
            && stderr.contains("$KV.ferry-sources")
            && stderr.contains("reader"),
        "{stderr}"
    );

    // With the workers stopped and one stream gone, a command that declared would
    // re-create it (as the admin) or fail (as the reader).
    drop(up);
    let js = async_nats::jetstream::new(nats.client().await);
    js.delete_stream(ferry_proto::subjects::JOBS_STREAM)
        .await
        .unwrap();
    let before = stream_names(&js).await;

    let status = run(&reader_config, &["status", "--json"]).await.unwrap();
    assert_eq!(status.status.code(), Some(0), "{}", text(&status.stderr));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let rows = status.as_array().unwrap();
    let of = |name: &str| rows.iter().find(|s| s["source"] == name).unwrap().clone();
    assert_eq!(
        of("orders")["last_success"]["backup_id"],
        backup_id.as_str()
    );
    assert!(
        of("orders")["next_run"]
            .as_str()
            .unwrap()
            .ends_with("03:00:00Z")
    );
    assert_eq!(of("live")["origin"], "registry");
    assert_eq!(rows.len(), 2, "the refused source is not there: {status}");
    let table = run(&reader_config, &["status"]).await.unwrap();
    assert_eq!(table.status.code(), Some(0), "{}", text(&table.stderr));
    assert!(
        text(&table.stdout).contains(&backup_id),
        "{}",
        text(&table.stdout)
    );

    let sources = run(&reader_config, &["sources", "list", "--json"])
        .await
        .unwrap();
    assert_eq!(sources.status.code(), Some(0), "{}", text(&sources.stderr));
    let sources: serde_json::Value = serde_json::from_slice(&sources.stdout).unwrap();
    let names: Vec<&str> = sources
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["source"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["live", "orders"]);

    let plan = run(
        &reader_config,
        &["retention", "plan", "--source", "live", "--json"],
    )
    .await
    .unwrap();
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan.stderr));

    // `list` and `verify` read only the store: they work with NATS out of reach.
    for config in [&reader_config, &offline_config] {
        let list = run(config, &["list", "--json"]).await.unwrap();
        assert_eq!(list.status.code(), Some(0), "{}", text(&list.stderr));
        let manifests: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
        assert_eq!(manifests[0]["backup_id"], backup_id.as_str());
        let verify = run(config, &["verify", "--source", "orders"])
            .await
            .unwrap();
        assert_eq!(verify.status.code(), Some(0), "{}", text(&verify.stderr));
    }

    // The admin's read-only commands declare nothing either.
    for args in [&["status"][..], &["sources", "list"][..]] {
        let out = run(&admin_config, args).await.unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    assert_eq!(stream_names(&js).await, before, "nothing was created");
    assert!(!before.contains(&ferry_proto::subjects::JOBS_STREAM.to_string()));
}
