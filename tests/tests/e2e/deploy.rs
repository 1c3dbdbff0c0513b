//! Static checks of what users deploy: docker-compose.yml, deploy/Dockerfile, the
//! Kubernetes manifests, the Prometheus alert rules and the Grafana dashboard must
//! agree with the code: binaries, ports, configuration keys, secret variables and
//! metric names that really exist. No Docker engine or cluster is needed.

use std::collections::BTreeSet;

use crate::deploy_support::*;
use ferry_runtime::Config;
use serde_yaml::Value;

#[test]
fn compose_runs_every_worker_with_a_valid_configuration_and_its_secrets() {
    let compose = compose();
    let services = compose["services"].as_mapping().expect("services");
    let names: BTreeSet<String> = services
        .keys()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    for (name, service) in services {
        assert!(
            service["image"].as_str().is_some(),
            "{name:?} names its image"
        );
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
                "{name:?} depends on unknown {dep:?}"
            );
        }
    }

    // Every worker binary runs as its own container, with a readiness health check.
    let mut workers = BTreeSet::new();
    for (name, service) in services {
        let Some(binary) = strings(&service["entrypoint"]).first().cloned() else {
            continue;
        };
        if !binary.starts_with("ferry") {
            continue;
        }
        assert!(
            binaries().contains(&binary),
            "{name:?} runs unknown binary {binary}"
        );
        let dockerfile = service["build"]["dockerfile"].as_str().expect("built here");
        assert!(repo().join(dockerfile).is_file());
        if binary != "ferry" {
            workers.insert(binary.clone());
            let check = strings(&service["healthcheck"]["test"]).join(" ");
            assert!(check.contains("/readyz"), "{name:?} health check: {check}");
        }

        let config_mount = strings(&service["volumes"])
            .into_iter()
            .find(|v| v.contains(":/etc/ferry/ferry.toml"))
            .expect("ferry.toml is mounted");
        let env = service["environment"].as_mapping().expect("environment");
        assert_eq!(
            env.get("FERRY_CONFIG").and_then(Value::as_str),
            Some("/etc/ferry/ferry.toml")
        );
        let text =
            std::fs::read_to_string(repo().join(config_mount.split(':').next().unwrap())).unwrap();
        let config = checked_config(&text, "deploy/ferry.toml");
        let provided: BTreeSet<String> = env
            .keys()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect();
        for var in secret_env_vars(&config) {
            assert!(provided.contains(&var), "{var} is not set for {name:?}");
        }
        for var in &provided {
            check_env_override(var);
        }
        // The health check asks the port the configuration listens on.
        let port = listen_port(&config);
        let check = strings(&service["healthcheck"]["test"]).join(" ");
        assert!(
            binary == "ferry" || check.contains(&format!("/{port} ")),
            "{check}"
        );
        // Everything the configuration points at is a service of this file.
        let mut hosts = vec![config.nats.url.clone()];
        hosts.extend(config.sources.iter().map(|s| s.url.clone()));
        hosts.extend(config.storage.endpoint.clone());
        hosts.extend(config.telemetry.otlp_endpoint.clone());
        for url in hosts {
            let host = url::Url::parse(&url)
                .unwrap()
                .host_str()
                .unwrap()
                .to_string();
            assert!(
                names.contains(&host),
                "{name:?}: {url} is not a compose service"
            );
        }
        let engines: BTreeSet<String> = config
            .sources
            .iter()
            .map(|s| format!("{:?}", s.engine))
            .collect();
        assert_eq!(
            engines.len(),
            2,
            "a PostgreSQL and a MongoDB source: {engines:?}"
        );
    }
    assert_eq!(workers, worker_binaries(), "one container per worker");

    // Dumper and uploader share the spool volume.
    let spool_of = |service: &str| {
        strings(&compose["services"][service]["volumes"])
            .into_iter()
            .find(|v| v.contains(":/var/lib/ferry/spool"))
            .unwrap_or_else(|| panic!("{service} mounts the spool"))
    };
    assert_eq!(spool_of("ferry-dumper"), spool_of("ferry-uploader"));

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
fn prometheus_scrapes_every_worker_and_alerts_and_dashboard_use_exported_metrics() {
    let config = checked_config(
        &std::fs::read_to_string(repo().join("deploy/ferry.toml")).unwrap(),
        "deploy/ferry.toml",
    );
    let port = listen_port(&config);
    let prometheus = yaml(&repo().join("deploy/prometheus/prometheus.yml"));
    let targets: BTreeSet<String> = prometheus["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|job| job["static_configs"].as_sequence().unwrap().clone())
        .flat_map(|sc| strings(&sc["targets"]))
        .collect();
    let expected: BTreeSet<String> = worker_binaries()
        .into_iter()
        .map(|w| format!("{w}:{port}"))
        .collect();
    assert_eq!(targets, expected);
    let compose = compose();
    let mounts = strings(&compose["services"]["prometheus"]["volumes"]).join(" ");
    for rules in strings(&prometheus["rule_files"]) {
        assert!(mounts.contains(&format!(":{rules}")), "{rules} is mounted");
    }

    let exported = exported_metrics();
    let alerts = yaml(&repo().join("deploy/prometheus/alerts.yml"));
    let mut names = BTreeSet::new();
    for group in alerts["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().expect("alert name").to_string();
            let expr = rule["expr"].as_str().expect("expr");
            check_metrics(expr, &exported, &name);
            names.insert(name);
        }
    }
    for required in [
        "FerryBackupFailed",
        "FerryNoRecentBackup",
        "FerryConsumerLag",
    ] {
        assert!(names.contains(required), "alert {required} in {names:?}");
    }

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/dashboards/ferry.json")).unwrap(),
    )
    .expect("dashboard is JSON");
    let mut used = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            check_metrics(expr, &exported, panel["title"].as_str().unwrap());
            used.extend(metric_names(expr));
        }
    }
    for family in [
        "ferry_last_success_timestamp_seconds",
        "ferry_messages_handled_total",
        "ferry_consumer_pending_messages",
        "ferry_uploaded_bytes_total",
        "ferry_handle_duration_seconds_bucket",
    ] {
        assert!(used.contains(family), "the dashboard shows {family}");
    }
}

#[test]
fn dockerfile_ships_every_binary_the_postgres_clients_and_runs_as_non_root() {
    let dockerfile = std::fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap();
    for bin in binaries() {
        let copied = dockerfile
            .split_whitespace()
            .any(|word| word == format!("target/release/{bin}"));
        assert!(copied, "{bin} is not copied into the image");
    }
    for major in SUPPORTED_PG_MAJORS {
        assert!(
            dockerfile.contains(&format!("postgresql-client-{major}")),
            "the image installs pg_dump {major}"
        );
    }
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    assert!(
        !user.starts_with("root") && !user.starts_with('0'),
        "{user}"
    );
    let config = checked_config(
        &std::fs::read_to_string(repo().join("deploy/ferry.toml")).unwrap(),
        "deploy/ferry.toml",
    );
    assert!(dockerfile.contains(&format!("EXPOSE {}", listen_port(&config))));
    assert!(repo().join(".dockerignore").is_file());
}

#[test]
fn kubernetes_manifests_deploy_every_worker_with_probes_config_secrets_and_budgets() {
    let k8s = Manifests::load();
    let config_map = k8s.one("ConfigMap", "ferry-config");
    let text = config_map["data"]["ferry.toml"]
        .as_str()
        .expect("ferry.toml");
    let config = checked_config(text, "deploy/kubernetes/config.yaml");
    assert_eq!(
        config.nats.replicas, 3,
        "R3 streams on the three-node cluster"
    );
    let port = listen_port(&config);
    let secret = k8s.one("Secret", "ferry-credentials");
    let secret_keys: BTreeSet<String> = secret["stringData"]
        .as_mapping()
        .unwrap()
        .keys()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    for var in secret_env_vars(&config) {
        assert!(secret_keys.contains(&var), "{var} is not in the Secret");
    }

    let mut deployed = BTreeSet::new();
    for deployment in k8s.all("Deployment") {
        let name = deployment["metadata"]["name"].as_str().unwrap();
        let pod = &deployment["spec"]["template"];
        let labels = pod["metadata"]["labels"].as_mapping().unwrap();
        let selector = deployment["spec"]["selector"]["matchLabels"]
            .as_mapping()
            .unwrap();
        assert!(
            selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
            "{name}"
        );
        assert_eq!(
            pod["spec"]["securityContext"]["runAsNonRoot"].as_bool(),
            Some(true)
        );
        let containers = pod["spec"]["containers"].as_sequence().unwrap();
        assert_eq!(containers.len(), 1, "{name}");
        let c = &containers[0];
        let binary = strings(&c["command"]).first().cloned().expect("command");
        assert!(worker_binaries().contains(&binary), "{name} runs {binary}");
        deployed.insert(binary.clone());
        assert_eq!(
            c["ports"][0]["containerPort"].as_u64(),
            Some(u64::from(port))
        );
        let port_name = c["ports"][0]["name"].as_str().unwrap();
        for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
            assert_eq!(
                c[probe]["httpGet"]["path"].as_str(),
                Some(path),
                "{name} {probe}"
            );
            assert_eq!(
                c[probe]["httpGet"]["port"].as_str(),
                Some(port_name),
                "{name}"
            );
        }
        for resource in ["cpu", "memory"] {
            assert!(
                !c["resources"]["requests"][resource].is_null(),
                "{name} requests {resource}"
            );
        }
        assert_eq!(
            c["envFrom"][0]["secretRef"]["name"].as_str(),
            Some("ferry-credentials")
        );
        for env in c["env"].as_sequence().unwrap() {
            let var = env["name"].as_str().unwrap();
            if var == "FERRY_CONFIG" {
                assert_eq!(env["value"].as_str(), Some("/etc/ferry/ferry.toml"));
            } else {
                check_env_override(var);
            }
        }
        let volumes = pod["spec"]["volumes"].as_sequence().unwrap();
        let mounts = c["volumeMounts"].as_sequence().unwrap();
        let mount_of = |path: &str| {
            let mount = mounts
                .iter()
                .find(|m| m["mountPath"].as_str() == Some(path))?;
            volumes.iter().find(|v| v["name"] == mount["name"])
        };
        let config_volume = mount_of("/etc/ferry").expect("config mounted at /etc/ferry");
        assert_eq!(
            config_volume["configMap"]["name"].as_str(),
            Some("ferry-config")
        );
        if matches!(binary.as_str(), "ferry-dumper" | "ferry-uploader") {
            let spool = mount_of(config.spool.path.to_str().unwrap()).expect("spool mounted");
            let claim = spool["persistentVolumeClaim"]["claimName"]
                .as_str()
                .unwrap();
            let pvc = k8s.one("PersistentVolumeClaim", claim);
            assert_eq!(strings(&pvc["spec"]["accessModes"]), ["ReadWriteMany"]);
        }
        let budget = k8s.all("PodDisruptionBudget").into_iter().find(|pdb| {
            pdb["spec"]["selector"]["matchLabels"]
                .as_mapping()
                .is_some_and(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)))
        });
        assert!(budget.is_some(), "{name} has a PodDisruptionBudget");
    }
    assert_eq!(deployed, worker_binaries(), "a Deployment per worker");

    let scaled: BTreeSet<String> = k8s
        .all("HorizontalPodAutoscaler")
        .iter()
        .map(|h| {
            h["spec"]["scaleTargetRef"]["name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        scaled.contains("ferry-dumper") && scaled.contains("ferry-uploader"),
        "{scaled:?}"
    );
    for target in &scaled {
        k8s.one("Deployment", target);
    }

    // The three-node JetStream cluster Ferry's nats.url points at.
    let nats = k8s.one("StatefulSet", "nats");
    assert_eq!(nats["spec"]["replicas"].as_u64(), Some(3));
    let nats_conf = k8s.one("ConfigMap", "nats-config")["data"]["nats.conf"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(nats_conf.contains("jetstream"));
    assert_eq!(
        nats_conf.matches(":6222").count(),
        4,
        "listen and three routes"
    );
    let host = url::Url::parse(&config.nats.url)
        .unwrap()
        .host_str()
        .unwrap()
        .to_string();
    let service = host.split('.').next().unwrap();
    k8s.one("Service", service);
    let image = nats["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap();
    let compose = compose();
    assert_eq!(Some(image), compose["services"]["nats"]["image"].as_str());

    k8s.check_kustomization();
}

#[test]
fn the_configurations_shipped_name_only_keys_the_code_knows() {
    // A key the code does not know is refused, so these checks can fail.
    let err = toml::from_str::<Config>("[storage]\nbukcet = \"x\"\n").unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
    let unknown = std::panic::catch_unwind(|| check_env_override("FERRY_HTTP__LISTNE"));
    assert!(unknown.is_err(), "a misspelt override is caught");
    check_env_override("FERRY_TELEMETRY__OTLP_PROTOCOL");
    let exported = exported_metrics();
    assert!(
        exported.contains("ferry_last_success_timestamp_seconds"),
        "{exported:?}"
    );
    assert!(exported.contains("ferry_notifications"), "{exported:?}");
    let missing = std::panic::catch_unwind(|| {
        check_metrics("rate(ferry_no_such_metric_total[5m])", &exported, "test")
    });
    assert!(missing.is_err(), "an unknown metric is caught");
}
