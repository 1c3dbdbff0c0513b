//! Static checks of what users deploy: docker-compose.yml, deploy/Dockerfile and the
//! configuration they ship must agree with the code (no Docker engine is needed).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ferry_runtime::Config;
use serde_yaml::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn compose() -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(repo().join("docker-compose.yml")).unwrap())
        .expect("compose parses")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn compose_mounts_files_that_exist_and_a_valid_configuration() {
    let compose = compose();
    let services = compose["services"].as_mapping().expect("services");
    for (name, service) in services {
        for volume in strings(&service["volumes"]) {
            let host = volume.split(':').next().unwrap();
            if host.starts_with("./") {
                assert!(repo().join(host).exists(), "{name:?} mounts missing {host}");
            }
        }
        for port in strings(&service["ports"]) {
            let parts: Vec<&str> = port.split(':').collect();
            assert!(
                parts.len() == 2 && parts.iter().all(|p| p.parse::<u16>().is_ok()),
                "{name:?} port {port}"
            );
        }
        for dep in service["depends_on"]
            .as_mapping()
            .map(|m| m.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            assert!(
                services.contains_key(&dep),
                "{name:?} depends on unknown service {dep:?}"
            );
        }
    }

    let ferry = &compose["services"]["ferry"];
    let dockerfile = ferry["build"]["dockerfile"].as_str().unwrap();
    assert!(repo().join(dockerfile).is_file());
    let config_mount = strings(&ferry["volumes"])
        .into_iter()
        .find(|v| v.contains(":/etc/ferry/ferry.toml"))
        .expect("ferry.toml is mounted");
    let config_text =
        std::fs::read_to_string(repo().join(config_mount.split(':').next().unwrap())).unwrap();
    let config =
        Config::from_toml(&config_text).unwrap_or_else(|e| panic!("deploy/ferry.toml: {e}"));

    // Every secret the configuration names is provided to the container.
    let env = ferry["environment"]
        .as_mapping()
        .expect("ferry environment");
    let provided: BTreeSet<&str> = env.keys().filter_map(|k| k.as_str()).collect();
    for source in &config.sources {
        if let Some(var) = &source.password_env {
            assert!(
                provided.contains(var.as_str()),
                "{var} (sources {}) is not set in compose",
                source.name
            );
        }
    }
    // The metrics port is published, and NATS and PostgreSQL are the compose services.
    let port = config.http.listen.rsplit(':').next().unwrap();
    assert!(
        strings(&ferry["ports"])
            .iter()
            .any(|p| p.ends_with(&format!(":{port}")))
    );
    assert!(config.nats.url.contains("//nats:"), "{}", config.nats.url);
    for source in &config.sources {
        let host = url::Url::parse(&source.url)
            .unwrap()
            .host_str()
            .unwrap()
            .to_string();
        assert!(
            services.contains_key(Value::from(host.clone())),
            "source {} points at {host}",
            source.name
        );
    }

    // NATS 2.10 or newer, which Ferry requires.
    let image = compose["services"]["nats"]["image"].as_str().unwrap();
    let version = image.split(':').nth(1).unwrap();
    let mut parts = version
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    assert!(
        (parts.next().unwrap(), parts.next().unwrap()) >= (2, 10),
        "{image}"
    );
}

#[test]
fn dockerfile_ships_every_binary_and_the_pg_dump_the_configuration_uses() {
    let dockerfile = std::fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap();
    let mut binaries = vec!["ferry".to_string()];
    for entry in std::fs::read_dir(repo().join("services")).unwrap() {
        let dir = entry.unwrap().path();
        if dir.join("src/main.rs").is_file() && dir.file_name().unwrap() != "ferry" {
            binaries.push(format!(
                "ferry-{}",
                dir.file_name().unwrap().to_string_lossy()
            ));
        }
    }
    assert_eq!(binaries.len(), 6, "{binaries:?}");
    for bin in &binaries {
        let copied = dockerfile
            .split_whitespace()
            .any(|word| word == format!("target/release/{bin}"));
        assert!(copied, "{bin} is not copied into the image");
    }
    let config =
        Config::from_toml(&std::fs::read_to_string(repo().join("deploy/ferry.toml")).unwrap())
            .unwrap();
    let pg_bin = config
        .dumper
        .pg_bin_dir
        .expect("pg_bin_dir")
        .display()
        .to_string();
    let major = pg_bin
        .trim_end_matches("/bin")
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    assert!(
        dockerfile.contains(&format!("postgresql-client-{major}")),
        "the image installs pg_dump {major}"
    );
    assert!(
        dockerfile.contains("USER ferry"),
        "the image runs as a non-root user"
    );
}
