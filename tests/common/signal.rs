// Signalling a child process, shared by the test harnesses as text (`include!`).

/// Sends `signal` (KILL, TERM, STOP, CONT) to `child` with kill(1); when it was sent.
fn send_signal(child: &std::process::Child, signal: &str) -> std::time::Instant {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal} {}", child.id());
    std::time::Instant::now()
}
