//! The Debian package as an operator meets it: `packaging/deb/build` packages this build's
//! binary, the layout is read back with `dpkg-deb`, lintian must report no error or warning,
//! then the package is installed for real with `dpkg -i`, upgraded over itself (with a good
//! and with a rejected configuration), purged, installed again and purged again.
//!
//! It changes the machine (a package, a system user, files in /etc and /var/lib), so it needs
//! root, holds a lock against a second run, and puts everything back in a drop guard even
//! when an assertion fails. It never skips: without root or the Debian tools it fails, and
//! tests/run-all.sh installs the tools.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_standby-proxy");
const PACKAGE: &str = "standby-proxy";
const CONFIG: &str = "/etc/standby-proxy/standby-proxy.toml";
const ETC: &str = "/etc/standby-proxy";
const STATE: &str = "/var/lib/standby-proxy";
const INSTALLED: &str = "/usr/bin/standby-proxy";
const UNIT: &str = "/lib/systemd/system/standby-proxy.service";
const ENABLED: &str = "/etc/systemd/system/multi-user.target.wants/standby-proxy.service";
const HELPER_STATE: &str =
    "/var/lib/systemd/deb-systemd-helper-enabled/standby-proxy.service.dsh-also";
/// What postinst tells the operator to run after `certs init` (the same lines as README.Debian
/// and the README); the test runs them as printed.
const CHGRP: &str =
    "chgrp standby-proxy /etc/standby-proxy/certs/omm1.key /etc/standby-proxy/certs/front.key";
const CHMOD: &str =
    "chmod 0640 /etc/standby-proxy/certs/omm1.key /etc/standby-proxy/certs/front.key";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        // A dpkg question (it should ask none) fails at once instead of waiting on a terminal.
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program} does not run: {e}"))
}

/// Runs a command that must succeed; returns its stdout and stderr together.
fn must(program: &str, args: &[&str]) -> String {
    let output = run(program, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{program} {args:?}: {}\n{text}",
        output.status
    );
    text
}

fn installed() -> bool {
    let output = run("dpkg-query", &["-W", "-f=${Status}", PACKAGE]);
    output.status.success() && !String::from_utf8_lossy(&output.stdout).contains("not-installed")
}

fn user_exists() -> bool {
    run("getent", &["passwd", PACKAGE]).status.success()
}

fn group_exists() -> bool {
    run("getent", &["group", PACKAGE]).status.success()
}

/// Whether a process runs the installed binary (other tests run the build's own binary).
fn installed_binary_runs() -> bool {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|entry| std::fs::read_link(entry.path().join("exe")).ok())
        .any(|exe| exe == Path::new(INSTALLED))
}

/// Puts the machine back as it was: purges the package and removes what the test (not an
/// operator before it) made, whether the test passed or not.
struct Machine {
    dir: PathBuf,
    user_existed: bool,
    group_existed: bool,
    etc_existed: bool,
    state_existed: bool,
    // Held until the guard is dropped, after the clean-up: a second run waits for it.
    _lock: File,
}

impl Machine {
    fn take() -> Machine {
        let uid = must("id", &["-u"]);
        assert_eq!(
            uid.trim(),
            "0",
            "tests/package.rs installs a package and needs root (tests/run-all.sh runs as root)"
        );
        for tool in [
            "dpkg",
            "dpkg-deb",
            "dpkg-shlibdeps",
            "lintian",
            "strip",
            "readelf",
            "systemd-analyze",
        ] {
            assert!(
                run("sh", &["-c", &format!("command -v {tool}")])
                    .status
                    .success(),
                "{tool} is missing: this test needs a Debian system with dpkg-dev, binutils, \
                 lintian and systemd (tests/run-all.sh installs them)"
            );
        }
        let lock = File::create(std::env::temp_dir().join("standby-proxy-package-test.lock"))
            .expect("lock file");
        // SAFETY: flock on a descriptor this File owns; no pointers.
        let locked = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(locked, 0, "flock: {}", std::io::Error::last_os_error());
        assert!(
            !installed(),
            "{PACKAGE} is installed on this machine; the test installs and purges it, so it \
             leaves an existing installation alone. If a killed test run left it: dpkg --purge \
             {PACKAGE}"
        );
        let dir = std::env::temp_dir().join(format!("standby-package-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Machine {
            dir,
            user_existed: user_exists(),
            group_existed: group_exists(),
            etc_existed: Path::new(ETC).exists(),
            state_existed: Path::new(STATE).exists(),
            _lock: lock,
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if installed() {
            let purge = run("dpkg", &["--purge", PACKAGE]);
            eprintln!("clean-up: dpkg --purge: {}", purge.status);
        }
        if !self.etc_existed {
            std::fs::remove_dir_all(ETC).ok();
        }
        if !self.state_existed {
            std::fs::remove_dir_all(STATE).ok();
        }
        if !self.user_existed && user_exists() {
            run("userdel", &[PACKAGE]);
        }
        if !self.group_existed && group_exists() {
            run("groupdel", &[PACKAGE]);
        }
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

fn mode(path: impl AsRef<Path>) -> u32 {
    let path = path.as_ref();
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn gunzip(path: &Path) -> String {
    must("gzip", &["-dc", &path.display().to_string()])
}

/// Builds the package from this build's binary; returns the .deb.
fn build(machine: &Machine) -> PathBuf {
    let before = std::fs::metadata(BIN).expect("the test binary");
    let out = machine.dir.join("out");
    let script = repo().join("packaging/deb/build");
    let output = Command::new(&script)
        .args(["--binary", BIN, "--out"])
        .arg(&out)
        .output()
        .expect("packaging/deb/build runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "build failed:\n{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let deb = PathBuf::from(stdout.lines().last().expect("the .deb's path").trim());
    assert!(deb.is_file(), "{} is not a file", deb.display());
    let after = std::fs::metadata(BIN).expect("the test binary");
    assert_eq!(
        (before.len(), before.modified().ok()),
        (after.len(), after.modified().ok()),
        "the build must strip a copy, never its input"
    );
    deb
}

/// The package's control data and file list, then its files as `dpkg-deb -x` unpacks them.
fn check_layout(machine: &Machine, deb: &str) {
    let arch = must("dpkg", &["--print-architecture"]);
    let info = must("dpkg-deb", &["-I", deb]);
    for field in [
        "Package: standby-proxy".to_owned(),
        format!("Version: {}-1", env!("CARGO_PKG_VERSION")),
        format!("Architecture: {}", arch.trim()),
        "Depends: libc6 (>= ".to_owned(),
    ] {
        assert!(info.contains(&field), "{field:?} missing from:\n{info}");
    }
    for script in ["postinst", "prerm", "postrm", "conffiles", "md5sums"] {
        assert!(
            info.contains(&format!(" {script} ")),
            "no {script}:\n{info}"
        );
    }
    let conffiles = must("dpkg-deb", &["-I", deb, "conffiles"]);
    assert_eq!(conffiles.trim(), CONFIG);

    let list = must("dpkg-deb", &["-c", deb]);
    let entry = |path: &str| {
        list.lines()
            .find(|line| line.ends_with(&format!(" .{path}")))
            .unwrap_or_else(|| panic!("{path} missing from the package:\n{list}"))
            .to_owned()
    };
    assert!(entry(INSTALLED).starts_with("-rwxr-xr-x root/root"));
    for path in [UNIT, CONFIG, "/usr/share/man/man8/standby-proxy.8.gz"] {
        assert!(entry(path).starts_with("-rw-r--r-- root/root"), "{path}");
    }

    let root = machine.dir.join("unpacked");
    must("dpkg-deb", &["-x", deb, &root.display().to_string()]);
    let file = |path: &str| root.join(path.trim_start_matches('/'));
    assert_eq!(mode(file(INSTALLED)), 0o755);
    // Stripped as dh_strip would: no debug information, no symbol table (.debug_gdb_scripts,
    // a few loaded bytes naming Rust's pretty-printers, stays, as it does with dh_strip).
    let sections = must("readelf", &["-SW", &file(INSTALLED).display().to_string()]);
    for section in [".debug_info", ".debug_line", ".symtab"] {
        assert!(
            !sections.contains(&format!(" {section} ")),
            "the packaged binary keeps {section}"
        );
    }
    let packaged_check = Command::new(file(INSTALLED))
        .args(["check-config", "--config"])
        .arg(file(CONFIG))
        .output()
        .expect("the packaged binary runs");
    assert!(packaged_check.status.success(), "{packaged_check:?}");
    // One unit for the package and a manual installation: the repository's.
    assert_eq!(
        std::fs::read_to_string(file(UNIT)).expect("unit"),
        std::fs::read_to_string(repo().join("config/standby-proxy.service")).expect("repo unit")
    );
    let unit = std::fs::read_to_string(file(UNIT)).expect("unit");
    for line in [
        "User=standby-proxy",
        "StateDirectory=standby-proxy",
        "ConfigurationDirectory=standby-proxy",
        "ExecStart=/usr/bin/standby-proxy run --config /etc/standby-proxy/standby-proxy.toml",
    ] {
        assert!(unit.lines().any(|l| l == line), "unit lacks {line}");
    }
    let doc = "/usr/share/doc/standby-proxy";
    let copyright = std::fs::read_to_string(file(&format!("{doc}/copyright"))).expect("copyright");
    assert!(copyright
        .starts_with("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"));
    assert!(copyright.contains("License: MIT or Apache-2.0"));
    let changelog = gunzip(&file(&format!("{doc}/changelog.Debian.gz")));
    assert!(changelog.starts_with(&format!("standby-proxy ({}-1) ", env!("CARGO_PKG_VERSION"))));
    assert!(gunzip(&file(&format!("{doc}/README.md.gz"))).starts_with("# standby-proxy"));
    assert!(gunzip(&file("/usr/share/man/man8/standby-proxy.8.gz")).contains(".SH SYNOPSIS"));
    for path in [
        "README.Debian",
        "examples/polkit-standby-proxy-hooks.rules",
        "examples/sudoers-standby-proxy-hooks",
    ] {
        assert!(file(&format!("{doc}/{path}")).is_file(), "{path}");
    }
    assert!(file("/usr/share/lintian/overrides/standby-proxy").is_file());
}

fn lintian(deb: &str) {
    // --fail-on error,warning: the exit status says whether any such tag was found.
    // Overridden tags are not reported; each override says why.
    let output = run(
        "lintian",
        &["--fail-on", "error,warning", "--display-info", deb],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("lintian: {}\n{text}", output.status);
    let tags: Vec<_> = text
        .lines()
        .filter(|l| l.starts_with("E: ") || l.starts_with("W: "))
        .collect();
    assert!(
        output.status.success() && tags.is_empty(),
        "lintian:\n{text}"
    );
}

/// `dpkg -i`, which must succeed; returns what the maintainer scripts printed.
fn install(deb: &str) -> String {
    let text = must("dpkg", &["-i", deb]);
    println!("dpkg -i:\n{text}");
    text
}

fn check_installed(first: &str) {
    assert!(installed());
    let user = must("getent", &["passwd", PACKAGE]);
    assert!(
        user.trim()
            .ends_with(":/var/lib/standby-proxy:/usr/sbin/nologin"),
        "{user}"
    );
    assert_eq!(
        std::fs::read_link(ENABLED).expect("the unit is enabled"),
        Path::new(UNIT)
    );
    // Enabled, not started: there are no keys yet.
    assert!(!installed_binary_runs(), "the package started the node");
    if Path::new("/run/systemd/system").exists() {
        let active = run("systemctl", &["is-active", "standby-proxy.service"]);
        assert!(!active.status.success(), "the unit was started");
    }
    for step in ["certs init --dir /etc/standby-proxy/certs", CHGRP, CHMOD] {
        assert!(first.contains(step), "postinst does not say {step:?}");
    }
    let check = must(INSTALLED, &["check-config", "--config", CONFIG]);
    assert!(check.contains(": ok"), "{check}");
    check_cluster_mode();
    // The installed unit as systemd reads it, its man page (Documentation=) included.
    must("systemd-analyze", &["verify", UNIT]);
}

/// The package runs in cluster mode: its binary is built with etcd support (the test binary
/// packaged here is, when the suite runs with `--features etcd` as tests/run-all.sh does).
fn check_cluster_mode() {
    let dir = std::env::temp_dir().join(format!("standby-package-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp folder");
    let config = dir.join("cluster.toml");
    std::fs::write(
        &config,
        "[node]\nid = \"a\"\naddress = \"127.0.0.1\"\n\n[cluster]\nbackend = \"etcd\"\nname = \"site\"\nendpoints = [\"http://127.0.0.1:2379\"]\n",
    )
    .expect("config");
    let config = config.display().to_string();
    let output = run(INSTALLED, &["check-config", "--config", &config]);
    let text = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    std::fs::remove_dir_all(&dir).ok();
    if cfg!(feature = "etcd") {
        assert!(output.status.success(), "cluster mode refused: {text}");
    } else {
        assert!(text.contains("--features etcd"), "{text}");
    }
}

/// The commands the operator is told to run make the node's keys readable to the service
/// user, and only those.
fn check_key_permissions() {
    must(
        INSTALLED,
        &[
            "certs",
            "init",
            "--dir",
            "/etc/standby-proxy/certs",
            "--node",
            "omm1=192.0.2.10",
            "--node",
            "omm2=192.0.2.11",
        ],
    );
    must("sh", &["-c", CHGRP]);
    must("sh", &["-c", CHMOD]);
    let read = |key: &str| {
        run(
            "setpriv",
            &[
                "--reuid=standby-proxy",
                "--regid=standby-proxy",
                "--init-groups",
                "cat",
                &format!("/etc/standby-proxy/certs/{key}"),
            ],
        )
        .status
        .success()
    };
    assert!(
        read("omm1.key") && read("front.key"),
        "the user cannot read its keys"
    );
    assert!(
        !read("ca.key") && !read("omm2.key"),
        "the user reads other keys"
    );
}

fn upgrades(deb: &str) {
    // Over itself: postinst configure with the old version checks the configuration first.
    let again = install(deb);
    assert!(
        again.contains(&format!("check-config: {CONFIG}: ok")),
        "the upgrade did not check the configuration:\n{again}"
    );
    assert!(
        !installed_binary_runs(),
        "the upgrade started a stopped node"
    );
    // A configuration the new binary rejects: the upgrade completes, nothing is restarted,
    // and the reason is printed.
    let good = std::fs::read_to_string(CONFIG).expect("config");
    std::fs::write(CONFIG, format!("{good}\n[nonsense]\n")).expect("break the config");
    let rejected = install(deb);
    std::fs::write(CONFIG, good).expect("restore the config");
    assert!(
        rejected.contains("NOT restarted") && rejected.contains("nonsense"),
        "{rejected}"
    );
    assert!(!installed_binary_runs());
}

fn purge_leaves(operator_files: bool) {
    let output = must("dpkg", &["--purge", PACKAGE]);
    println!("dpkg --purge:\n{output}");
    assert!(!installed());
    for gone in [INSTALLED, UNIT, ENABLED, CONFIG, STATE, HELPER_STATE] {
        assert!(
            std::fs::symlink_metadata(gone).is_err(),
            "{gone} is still there after purge"
        );
    }
    // Not masked either: remove masks the unit, purge unmasks it.
    assert!(std::fs::symlink_metadata("/etc/systemd/system/standby-proxy.service").is_err());
    if operator_files {
        // What the operator made (keys) stays; dpkg says why the folder does.
        let left: Vec<_> = std::fs::read_dir(ETC)
            .expect("etc kept")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("certs")]);
        assert!(output.contains("not empty so not removed"), "{output}");
    } else {
        assert!(!Path::new(ETC).exists(), "{ETC} is still there after purge");
    }
    // Debian keeps system users on purge (their ids may still own files).
    assert!(user_exists());
}

#[test]
fn the_debian_package_builds_installs_upgrades_and_purges_cleanly() {
    let machine = Machine::take();
    let deb = build(&machine);
    let deb = deb.to_str().expect("a UTF-8 path");
    println!("built {deb}");
    check_layout(&machine, deb);
    lintian(deb);

    let first = install(deb);
    check_installed(&first);
    check_key_permissions();
    upgrades(deb);
    // The node's store, as a run would have left it: purge deletes it.
    std::fs::create_dir_all(STATE).expect("state dir");
    std::fs::write(Path::new(STATE).join("omm1.redb"), b"store").expect("state");
    purge_leaves(true);
    std::fs::remove_dir_all(ETC).expect("the operator removes the keys");

    // Installed again with the user already there, and purged with nothing of the operator's.
    let again = install(deb);
    check_installed(&again);
    purge_leaves(false);
    drop(machine);
    assert!(!installed());
}
