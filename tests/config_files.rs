//! Every file in `config/` is a fixture: the valid ones load, each one in `config/invalid/`
//! fails with the message its first line names (`# expect: ...`), and a bogus key added to
//! any table of a valid file is refused by name.

use standby_proxy::config::Config;
use std::path::{Path, PathBuf};

fn toml_files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_shipped_config_is_valid() {
    let files = toml_files("config");
    assert!(
        files.len() >= 3,
        "standby-proxy.toml, node-a.toml, node-b.toml"
    );
    for file in files {
        if let Err(error) = Config::load(&file) {
            panic!("{}: {error}", file.display());
        }
    }
}

#[test]
fn the_pair_configs_form_a_pair() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let a = Config::load(&dir.join("node-a.toml")).expect("node a");
    let b = Config::load(&dir.join("node-b.toml")).expect("node b");
    let (peer_of_a, peer_of_b) = (a.peer.expect("a has a peer"), b.peer.expect("b has a peer"));
    assert_eq!(peer_of_a.id, b.node.id);
    assert_eq!(peer_of_b.id, a.node.id);
    assert_eq!(peer_of_a.address, b.node.address);
    assert_eq!(peer_of_b.address, a.node.address);
    assert_eq!(a.node.address.to_string(), "127.0.0.1");
    assert_eq!(b.node.address.to_string(), "127.0.0.2");
    assert_eq!(
        a.election, b.election,
        "both nodes must time the election alike"
    );
}

#[test]
fn every_invalid_config_fails_with_the_message_it_names() {
    let files = toml_files("config/invalid");
    assert!(files.len() >= 10);
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable");
        let expected = text
            .lines()
            .next()
            .and_then(|line| line.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{}: first line must be `# expect: ...`", file.display()));
        match Config::parse(&text) {
            Ok(_) => panic!("{} loaded although invalid", file.display()),
            Err(errors) => {
                let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
                assert!(
                    shown.iter().any(|line| line.starts_with(expected)),
                    "{}: expected a line starting {expected:?}, got {shown:#?}",
                    file.display()
                );
            }
        }
    }
}

#[test]
fn a_bogus_key_in_any_table_is_refused_by_name() {
    for file in toml_files("config") {
        let text = std::fs::read_to_string(&file).expect("readable");
        let tables: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix('[')?.strip_suffix(']'))
            .collect();
        assert!(!tables.is_empty());
        for table in tables {
            let header = format!("[{table}]\n");
            let broken = text.replacen(&header, &format!("{header}bogus_key = 1\n"), 1);
            let errors = Config::parse(&broken).expect_err("bogus key refused");
            let wanted = format!("{table}.bogus_key: unknown field `bogus_key`");
            assert!(
                errors.iter().any(|e| e.to_string().starts_with(&wanted)),
                "{} [{table}]: {errors:?}",
                file.display()
            );
        }
    }
}

/// Every metric the Grafana dashboard queries is one the daemon exports (described in
/// src/telemetry.rs), so the dashboard cannot silently drift from the code.
#[test]
fn the_grafana_dashboard_queries_only_metrics_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text =
        std::fs::read_to_string(root.join("config/grafana-dashboard.json")).expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let telemetry = std::fs::read_to_string(root.join("src/telemetry.rs")).expect("telemetry");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    let mut checked = 0;
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let names = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| word.starts_with("standby_"));
            for name in names {
                let base = name
                    .strip_suffix("_bucket")
                    .or_else(|| name.strip_suffix("_count"))
                    .or_else(|| name.strip_suffix("_sum"))
                    .unwrap_or(name);
                assert!(
                    telemetry.contains(&format!("\"{base}\"")),
                    "panel {:?} queries {name}, which the daemon does not export",
                    panel["title"]
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 15, "{checked}");
}
