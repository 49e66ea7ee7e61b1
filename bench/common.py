"""Helpers shared by the Python benchmarks in bench/: processes in their own group, waiting
for a port, wrk and h2load runs and their figures."""
import os, re, signal, socket, subprocess, sys, time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROXY = os.path.join(REPO, "target/release/standby-proxy")


def build():
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO, check=True)


def add_run_options(parser, seconds=None):
    """--quick (the test suite's mode: every row, short runs) and --binary (the daemon to
    measure: the test suite passes its own build, so no release build is started), and
    --seconds if the bench is timed (1 with --quick)."""
    if seconds is not None:
        parser.add_argument("--seconds", type=int, default=seconds)
    parser.add_argument("--quick", action="store_true",
                        help="the test suite's mode: every row, short runs")
    parser.add_argument("--binary", help="the standby-proxy to measure (default: a fresh "
                        "release build, target/release/standby-proxy)")


def proxy_binary(args):
    """The daemon to measure: --binary as given, or target/release/standby-proxy built now."""
    if args.binary:
        if not os.access(args.binary, os.X_OK):
            sys.exit(f"bench: no executable {args.binary}")
        return os.path.abspath(args.binary)
    build()
    return PROXY


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


def h2load_with_cpu(url, seconds, connections, streams, pgid, log_file, h1=False, threads=2):
    """h2load over `connections` connections with `streams` requests in flight on each (h2
    streams; with `h1`, HTTP/1.1 with `streams` pipelined, so 1 for plain keep-alive):
    (requests/s, p99 ms from the per-request log, server CPU microseconds per request,
    "TLS version cipher, ALPN"). Failed, errored or timed-out requests and 4xx/5xx answers
    abort the bench. (h2load cannot measure closing clients: with `Connection: close` and
    -D it never finishes; wrk does those.)"""
    argv = ["h2load", f"-t{threads}", f"-c{connections}", f"-m{streams}", f"-D{seconds}",
            f"--log-file={log_file}"]
    if h1:
        argv.append("--h1")
    before = group_cpu_seconds(pgid)
    out = subprocess.run(argv + [url], capture_output=True, text=True, check=True).stdout
    used = group_cpu_seconds(pgid) - before
    counts = re.search(r"requests: \d+ total, \d+ started, (\d+) done, \d+ succeeded, "
                       r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    codes = re.search(r"status codes: \d+ 2xx, \d+ 3xx, (\d+) 4xx, (\d+) 5xx", out)
    rate = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    if not (counts and codes and rate):
        sys.exit(f"bench: no figures from h2load for {url}\n{out}")
    done = int(counts.group(1))
    bad = sum(map(int, counts.groups()[1:])) + sum(map(int, codes.groups()))
    if bad or not done:
        sys.exit(f"bench: {bad} failed requests or bad answers, {done} done, from {url}\n{out}")
    with open(log_file) as f:
        times = sorted(int(line.split("\t")[2]) for line in f if line.strip())
    os.unlink(log_file)
    p99_ms = times[min(len(times) - 1, int(len(times) * 0.99))] / 1000
    tls = " ".join(m.group(1) for m in
                   re.finditer(r"^(?:TLS Protocol|Cipher|Application protocol): (\S+)", out, re.M))
    return float(rate.group(1)), p99_ms, used / done * 1e6, tls


def table(title, columns, rows):
    """Prints rows of (label, ours, theirs, higher_is_better) with the ratio ours/theirs
    (or theirs/ours when lower is better), so > 1 always means standby-proxy is ahead."""
    width = max([34] + [len(row[0]) for row in rows])
    ours_w, theirs_w = (max(14, len(column)) for column in columns)
    print(title)
    print(f"{'':<{width}} {columns[0]:>{ours_w}} {columns[1]:>{theirs_w}} {'ratio':>7}")
    for label, ours, theirs, higher_is_better in rows:
        ratio = ours / theirs if higher_is_better else theirs / ours
        print(f"{label:<{width}} {ours:>{ours_w}.1f} {theirs:>{theirs_w}.1f} {ratio:>6.2f}x")


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
