//! bench/sip in its quick mode: standby-proxy and Kamailio as SIP redirector and stateless
//! proxy under sipload (bench/sipload.rs), and sipload checked against sipp. Asserts that the
//! benchmark runs and prints every scenario's row with its figures; never what the figures
//! are, since timings have no place in a test. Kamailio and sipp missing fails the test
//! (tests/run-all.sh installs them), it is not skipped.

use std::path::Path;
use std::process::Command;

const SCENARIOS: [&str; 3] = ["INVITE->302->ACK", "OPTIONS->200", "proxy INVITE..BYE"];
/// The scenarios that sipload runs against sipp too.
const CHECKED: [&str; 2] = ["INVITE->302->ACK", "proxy INVITE..BYE"];

#[test]
fn the_sip_benchmark_prints_every_scenario_for_both_servers_and_the_sipp_check() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("python3")
        .arg(repo.join("bench/sip"))
        .arg("--quick")
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_standby-proxy"))
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{stdout}");
    let table = |number: &str| section(&stdout, number);
    for scenario in SCENARIOS {
        // 1) both highest clean rates are numbers (0 when not even the first step was clean).
        let rates = row(&table("1)"), scenario);
        for rate in &rates[..2] {
            assert!(
                rate.parse::<u64>().is_ok(),
                "{scenario}: {rates:?}\n{stdout}"
            );
        }
        // 2) the common rate, and each server's CPU per call (or why there is none).
        let cpu = row(&table("2)"), scenario);
        assert!(
            cpu[0].parse::<f64>().is_ok(),
            "{scenario}: {cpu:?}\n{stdout}"
        );
        for figure in &cpu[1..3] {
            assert!(is_figure(figure), "{scenario}: {cpu:?}\n{stdout}");
        }
    }
    for scenario in CHECKED {
        // 3) "rate  completed / failed, cpu µs" for sipp, then for sipload.
        let check = row(&table("3)"), scenario);
        let numbers: Vec<_> = check
            .iter()
            .filter_map(|f| f.trim_end_matches(',').parse::<f64>().ok())
            .collect();
        assert_eq!(numbers.len(), 7, "{scenario}: {check:?}\n{stdout}");
    }
}

/// The lines of the table whose title starts with `number` ("2)"), up to the next title.
fn section(stdout: &str, number: &str) -> String {
    let is_title =
        |line: &str| line.as_bytes().get(1) == Some(&b')') && line.as_bytes()[0].is_ascii_digit();
    let lines: Vec<&str> = stdout
        .lines()
        .skip_while(|line| !line.starts_with(number))
        .collect();
    assert!(!lines.is_empty(), "no table {number}\n{stdout}");
    let body = lines[1..].iter().take_while(|line| !is_title(line));
    body.copied().collect::<Vec<_>>().join("\n")
}

/// The fields after `scenario` on its row of `table`.
fn row(table: &str, scenario: &str) -> Vec<String> {
    let line = table
        .lines()
        .find(|line| line.starts_with(scenario))
        .unwrap_or_else(|| panic!("no row {scenario} in\n{table}"));
    line[scenario.len()..]
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// A CPU figure, or the word saying the run at that rate was not clean.
fn is_figure(field: &str) -> bool {
    field.parse::<f64>().is_ok() || field == "unclean"
}
