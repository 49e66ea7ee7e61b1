"""Helpers shared by the Python benchmarks in bench/: processes in their own group, waiting
for a port, wrk runs and their figures."""
import os, re, signal, socket, subprocess, sys, time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROXY = os.path.join(REPO, "target/release/standby-proxy")


def build():
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO, check=True)


def ensure(commands_to_packages):
    """apt-get installs the Debian packages of any missing command."""
    missing = [pkg for cmd, pkg in commands_to_packages.items()
               if subprocess.run(["sh", "-c", f"command -v {cmd}"], capture_output=True).returncode]
    if missing:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                       check=True, env=env, stdout=subprocess.DEVNULL)


class Group:
    """Processes started in their own session, all killed on exit."""

    def __init__(self):
        self.children = []

    def start(self, argv, **kwargs):
        child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True, **kwargs)
        self.children.append(child)
        return child

    def __enter__(self):
        return self

    def __exit__(self, *_):
        for child in self.children:
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            child.wait()


def wait_port(port, host="127.0.0.1"):
    for _ in range(200):
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"bench: nothing listens on {host}:{port}")


def group_cpu_seconds(pgid):
    """CPU seconds (user + system) used so far by every process in the group (nginx and
    HAProxy fork workers)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getpgid(int(entry)) != pgid:
                continue
            fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, ProcessLookupError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def wrk_with_cpu(url, seconds, connections, pgid, close=False):
    """(requests/s, p99 ms, server CPU microseconds per request)."""
    before = group_cpu_seconds(pgid)
    rate, p99 = wrk(url, seconds, connections, close)
    used = group_cpu_seconds(pgid) - before
    return rate, p99, used / (rate * seconds) * 1e6


def wrk(url, seconds, connections, close=False, threads=2):
    """Requests per second by wrk (non-2xx/3xx answers count as errors: they abort the bench)."""
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if close:
        argv += ["-H", "Connection: close"]
    out = subprocess.run(argv + [url], capture_output=True, text=True, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        sys.exit(f"bench: {errors.group(1)} bad answers from {url}\n{out}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99_ms = None
    if p99:
        value, unit = float(p99.group(1)), p99.group(2)
        p99_ms = value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    return rate, p99_ms


def table(title, columns, rows):
    """Prints rows of (label, ours, theirs, higher_is_better) with the ratio ours/theirs
    (or theirs/ours when lower is better), so > 1 always means standby-proxy is ahead."""
    print(title)
    print(f"{'':<34} {columns[0]:>14} {columns[1]:>14} {'ratio':>7}")
    for label, ours, theirs, higher_is_better in rows:
        ratio = ours / theirs if higher_is_better else theirs / ours
        print(f"{label:<34} {ours:>14.1f} {theirs:>14.1f} {ratio:>6.2f}x")


def own_network_namespace():
    """Re-runs this script in a network namespace of its own (loopback up), so the nftables
    rules it sets and the ports it binds reach nothing else on the machine. Needs root."""
    if os.environ.get("STANDBY_BENCH_NETNS") == "1":
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        return
    ensure({"nft": "nftables", "unshare": "util-linux", "ip": "iproute2"})
    env = dict(os.environ, STANDBY_BENCH_NETNS="1")
    argv = ["unshare", "--net", "--", sys.executable, os.path.abspath(sys.argv[0]), *sys.argv[1:]]
    os.execvpe("unshare", argv, env)


def drop_tcp_port(port):
    """Drops every packet to and from `port` (lost SYNs, silent established connections)."""
    rules = (f"add table inet partition\n"
             f"add chain inet partition input {{ type filter hook input priority 0 ; }}\n"
             f"add rule inet partition input tcp dport {port} drop\n"
             f"add rule inet partition input tcp sport {port} drop\n")
    subprocess.run(["nft", "-f", "-"], input=rules.encode(), check=True)


def pass_tcp_port():
    subprocess.run(["nft", "delete", "table", "inet", "partition"], check=True)
