//! bench/http, bench/memory and bench/tcp in their quick mode, each against this build of the
//! daemon (`--binary`, so no release build is started): every scenario's row is printed with
//! its figures. Never what the figures are, since timings have no place in a test. The
//! scripts install what they lack (nginx, wrk, h2load, HAProxy, iperf3, Kamailio) with
//! apt-get; a missing tool that cannot be installed fails the test, it is not skipped.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

/// One benchmark at a time: they would share the 2 cores, and apt-get takes a lock.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// bench/http's rows, in order, in each of its tables.
const HTTP_ROWS: [&str; 7] = [
    "h1 keep-alive, 64 conns (wrk)",
    "h1 Connection: close, 32 conns (wrk)",
    "TLS h1 keep-alive, 64 conns (wrk)",
    "TLS h1 Connection: close, 32 conns (wrk)",
    "TLS h1 keep-alive, 32 conns (h2load)",
    "TLS h2, 32 conns x 1 stream (h2load)",
    "TLS h2, 32 conns x 10 streams (h2load)",
];

#[test]
fn the_http_benchmark_prints_every_row_over_h1_h2_plain_and_tls_for_both_servers() {
    let stdout = run("http");
    for scenario in ["307 redirects", "reverse proxy"] {
        for figure in [
            "requests per second",
            "p99 latency",
            "server CPU per request",
        ] {
            let rows = table(&stdout, &format!("{scenario}: {figure}"), HTTP_ROWS.len());
            for (line, label) in rows.iter().zip(HTTP_ROWS) {
                assert!(
                    line.starts_with(label),
                    "{scenario}: {figure}: no row {label:?}: {line:?}\n{stdout}"
                );
                numbers(&line[label.len()..], 3, &stdout);
            }
        }
        // h2load spoke h2 and HTTP/1.1 over TLS to both: the h2 rows are HTTP/2.
        let title = format!("{scenario}: h2load negotiated: ");
        let negotiated = stdout
            .lines()
            .find_map(|line| line.strip_prefix(title.as_str()))
            .unwrap_or_else(|| panic!("no line {title:?}\n{stdout}"));
        for server in negotiated.split("; ") {
            assert!(
                server.contains(" h2") && server.contains(" http/1.1"),
                "{scenario}: {server:?}\n{stdout}"
            );
        }
        assert!(
            negotiated.starts_with("standby-proxy ") && negotiated.contains("; nginx "),
            "{scenario}: {negotiated:?}\n{stdout}"
        );
    }
}

#[test]
fn the_memory_benchmark_prints_every_kind_of_idle_connection_for_both_servers() {
    let stdout = run("memory");
    let labels = ["SIP over TCP", "SIP over TLS", "TCP forwarding"];
    let rows = table(&stdout, "memory growth per idle connection", labels.len());
    for (line, label) in rows.iter().zip(labels) {
        assert!(
            line.starts_with(label),
            "no row {label:?}: {line:?}\n{stdout}"
        );
        // anchor name, then RSS ours, theirs, ratio, PSS ours, theirs, ratio.
        numbers(line, 6, &stdout);
    }
}

#[test]
fn the_tcp_benchmark_prints_throughput_and_connection_rate_for_both_forwarders() {
    let stdout = run("tcp");
    let bulk = [
        "iperf3, 1 stream(s) (Gbit/s)",
        "iperf3, 4 stream(s) (Gbit/s)",
    ];
    let connections = [
        "connections/s",
        "p99 latency (ms, lower better)",
        "forwarder CPU per connection (us, lower better)",
    ];
    for (title, labels) in [
        ("bulk throughput through the forwarder", &bulk[..]),
        (
            "new connections per second through the forwarder",
            &connections[..],
        ),
    ] {
        for (line, label) in table(&stdout, title, labels.len()).iter().zip(labels) {
            assert!(
                line.starts_with(label),
                "no row {label:?}: {line:?}\n{stdout}"
            );
            numbers(&line[label.len()..], 3, &stdout);
        }
    }
    let direct = stdout
        .lines()
        .find_map(|line| line.strip_prefix("(nginx directly, no forwarder: "))
        .unwrap_or_else(|| panic!("no line for nginx directly\n{stdout}"));
    numbers(direct.trim_end_matches(" connections/s)"), 1, &stdout);
}

/// Runs `bench/<script> --quick` against this build and returns what it printed.
fn run(script: &str) -> String {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("python3")
        .arg(repo.join("bench").join(script))
        .arg("--quick")
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_standby-proxy"))
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    println!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "bench/{script}: {}\n{stdout}",
        output.status
    );
    stdout
}

/// The `count` lines under the header of the table whose title starts with `title`.
fn table(stdout: &str, title: &str, count: usize) -> Vec<String> {
    let lines: Vec<&str> = stdout
        .lines()
        .skip_while(|line| !line.starts_with(title))
        .collect();
    assert!(lines.len() > count + 1, "no table {title:?}\n{stdout}");
    lines[2..2 + count].iter().map(|s| s.to_string()).collect()
}

/// The last `count` fields of `text`, each a number (a ratio ends in `x`).
fn numbers(text: &str, count: usize, stdout: &str) -> Vec<f64> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    assert!(fields.len() >= count, "{text:?}\n{stdout}");
    fields[fields.len() - count..]
        .iter()
        .map(|field| {
            let number = field.trim_end_matches('x').replace(',', "");
            number
                .parse::<f64>()
                .ok()
                .filter(|n| !n.is_nan())
                .unwrap_or_else(|| panic!("{field:?} in {text:?} is no number\n{stdout}"))
        })
        .collect()
}
