"""The floating-address failover race of bench/failover --vip: standby-proxy against
keepalived in the same network-namespace topology, measured the same way.

Topology (created here, removed at the end; nothing leaves the machine): namespaces for a
switch (a bridge), node a (10.77.0.1), node b (10.77.0.2) and a client (10.77.0.9); the
floating address 10.77.0.100/24. Each node runs a web server answering /who with its name.
This process moves into the client namespace and starts a request to
http://10.77.0.100:8080/who every millisecond, earlier ones staying in flight: a failover
is timed from the signal (kill -9, SIGTERM, the active node's link set down) to the first
answer from the other node.
"""
import ctypes, os, random, signal, socket, statistics, subprocess, sys, tempfile, time

from common import REPO, ensure

VIP = "10.77.0.100"
NODES = {"a": "10.77.0.1", "b": "10.77.0.2"}
CLIENT = "10.77.0.9"
CLONE_NEWNET = 0x40000000


def sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True).stdout


class Lab:
    def __init__(self):
        self.prefix = f"sfv{os.getpid() % 100000}"
        self.dir = tempfile.mkdtemp(prefix="standby-failover-vip-")
        self.servers = []
        sw = self.ns("sw")
        for who in ("sw", "a", "b", "c"):
            sh("ip", "netns", "add", self.ns(who))
            sh("ip", "-n", self.ns(who), "link", "set", "lo", "up")
        sh("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", sw, "link", "set", "br0", "up")
        for who, address in (("a", NODES["a"]), ("b", NODES["b"]), ("c", CLIENT)):
            sh("ip", "link", "add", "eth0", "netns", self.ns(who), "type", "veth", "peer", "name",
               f"p{who}", "netns", sw)
            sh("ip", "-n", sw, "link", "set", f"p{who}", "master", "br0")
            sh("ip", "-n", sw, "link", "set", f"p{who}", "up")
            sh("ip", "-n", self.ns(who), "addr", "add", f"{address}/24", "dev", "eth0")
            sh("ip", "-n", self.ns(who), "link", "set", "eth0", "up")
        for who in ("a", "b"):
            root = os.path.join(self.dir, f"www-{who}")
            os.makedirs(root)
            with open(os.path.join(root, "who"), "w") as f:
                f.write(who)
            self.servers.append(subprocess.Popen(
                ["ip", "netns", "exec", self.ns(who), sys.executable, "-m", "http.server", "8080",
                 "--bind", "0.0.0.0", "--directory", root],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def ns(self, who):
        return f"{self.prefix}{who}"

    def enter_client(self):
        libc = ctypes.CDLL(None, use_errno=True)
        with open(f"/run/netns/{self.ns('c')}") as handle:
            if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                sys.exit(f"setns: {os.strerror(ctypes.get_errno())}")

    def link(self, who, up):
        sh("ip", "-n", self.ns(who), "link", "set", "eth0", "up" if up else "down")

    def drop_vip(self, who):
        sh("ip", "-n", self.ns(who), "addr", "del", f"{VIP}/24", "dev", "eth0", check=False)

    def close(self):
        for server in self.servers:
            server.kill()
            server.wait()
        for who in ("a", "b", "c", "sw"):
            sh("ip", "netns", "del", self.ns(who), check=False)
        print(f"(files in {self.dir})")


def who_answers(timeout=0.05):
    """The node answering through the floating address, or None."""
    try:
        with socket.create_connection((VIP, 8080), timeout=timeout) as conn:
            conn.sendall(b"GET /who HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := conn.recv(4096):
                data += chunk
        body = data.split(b"\r\n\r\n", 1)[-1].decode()
        return body if body in NODES else None
    except OSError:
        return None


def first_answer_from(who, begin, limit=20.0):
    """Starts a new request through the floating address every millisecond (earlier ones
    stay in flight: a SYN lost while neighbours still point at the old node must not hold
    the probe up) and returns the time of the first answer from `who`, or None."""
    import selectors
    selector = selectors.DefaultSelector()
    next_start, received = begin, {}
    try:
        while time.monotonic() - begin < limit:
            now = time.monotonic()
            if now >= next_start:
                conn = socket.socket()
                conn.setblocking(False)
                conn.connect_ex((VIP, 8080))
                received[conn] = (now, b"")
                selector.register(conn, selectors.EVENT_WRITE)
                next_start = now + 0.001
            for key, events in selector.select(timeout=max(0.0, next_start - time.monotonic())):
                conn = key.fileobj
                started, data = received[conn]
                if events & selectors.EVENT_WRITE:
                    try:
                        conn.send(b"GET /who HTTP/1.0\r\n\r\n")
                        selector.modify(conn, selectors.EVENT_READ)
                    except OSError:
                        selector.unregister(conn)
                        conn.close()
                        del received[conn]
                    continue
                try:
                    chunk = conn.recv(4096)
                except OSError:
                    chunk = b""
                    data = b""
                if chunk:
                    received[conn] = (started, data + chunk)
                    continue
                selector.unregister(conn)
                conn.close()
                del received[conn]
                if data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace") == who:
                    return time.monotonic()
            # Give up on requests older than a second.
            for conn, (started, _) in list(received.items()):
                if time.monotonic() - started > 1.0:
                    selector.unregister(conn)
                    conn.close()
                    del received[conn]
        return None
    finally:
        for conn in list(received):
            selector.unregister(conn)
            conn.close()
        selector.close()


def wait_answer(who=None, limit=30.0):
    start = time.monotonic()
    while time.monotonic() - start < limit:
        got = who_answers()
        if got and (who is None or got == who):
            return got
        time.sleep(0.01)
    sys.exit(f"failover-vip: nobody answered through {VIP} (wanted {who})")


class Tool:
    """What the race needs of each contender: `start(who)`, `procs`, `after_kill(who)`."""

    def stop_all(self):
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        for who in NODES:
            self.after_kill(who)


class StandbyProxy(Tool):
    label = "standby-proxy (heartbeat 100ms, dead after 300ms)"

    def __init__(self, lab, binary):
        self.lab, self.binary, self.procs = lab, binary, {}
        certs = os.path.join(REPO, "certs")
        for who, me in NODES.items():
            other = [n for n in NODES if n != who][0]
            with open(os.path.join(lab.dir, f"{who}.toml"), "w") as f:
                f.write(f"""
[node]
id = "{who}"
address = "{me}"
priority = "{'primary' if who == 'a' else 'secondary'}"
[peer]
id = "{other}"
address = "{NODES[other]}"
connect = "{NODES[other]}:7701"
[peer_link]
listen = "{me}:7701"
ca = "{certs}/ca.pem"
cert = "{certs}/{who}.pem"
key = "{certs}/{who}.key"
[election]
heartbeat_interval = "100ms"
peer_dead_after = "300ms"
startup_wait = "1s"
[admin]
listen = "{me}:7780"
[store]
path = "{lab.dir}/{who}.redb"
[log]
level = "warn"
[[vip]]
address = "{VIP}/24"
interface = "eth0"
""")

    def start(self, who):
        self.procs[who] = subprocess.Popen(
            ["ip", "netns", "exec", self.lab.ns(who), self.binary, "run", "--config",
             os.path.join(self.lab.dir, f"{who}.toml")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def after_kill(self, who):
        # What the unit's ExecStopPost does.
        sh("ip", "netns", "exec", self.lab.ns(who), self.binary, "release-vips", "--config",
           os.path.join(self.lab.dir, f"{who}.toml"))



class Keepalived(Tool):
    def __init__(self, lab, advert):
        self.lab, self.advert, self.procs = lab, advert, {}
        self.label = f"keepalived (unicast VRRPv3, advert_int {advert})"
        for who, me in NODES.items():
            other = [n for n in NODES if n != who][0]
            with open(os.path.join(lab.dir, f"keepalived-{who}.conf"), "w") as f:
                f.write(f"""
global_defs {{
  vrrp_version 3
  script_user root
  enable_script_security
  vrrp_garp_master_delay 0
  vrrp_garp_master_repeat 3
}}
vrrp_instance pair {{
  state BACKUP
  nopreempt
  interface eth0
  virtual_router_id 77
  priority {150 if who == 'a' else 100}
  advert_int {advert}
  unicast_src_ip {me}
  unicast_peer {{
    {NODES[other]}
  }}
  virtual_ipaddress {{
    {VIP}/24 dev eth0
  }}
}}
""")

    def start(self, who):
        conf = os.path.join(self.lab.dir, f"keepalived-{who}.conf")
        pid = os.path.join(self.lab.dir, f"keepalived-{who}")
        self.procs[who] = subprocess.Popen(
            ["ip", "netns", "exec", self.lab.ns(who), "keepalived", "--dont-fork", "--vrrp",
             "--log-console", "-f", conf, "-p", pid + ".pid", "-r", pid + ".vrrp.pid"],
            stdout=subprocess.DEVNULL, stderr=open(pid + ".log", "a"), start_new_session=True)

    def after_kill(self, who):
        self.lab.drop_vip(who)
        # Its killed VRRP child may linger as a zombie (nothing reaps orphans here), which
        # keepalived's pid-file check would take for a running daemon.
        for suffix in (".pid", ".vrrp.pid"):
            try:
                os.remove(os.path.join(self.lab.dir, f"keepalived-{who}{suffix}"))
            except FileNotFoundError:
                pass



def race(lab, tool, rounds, rng):
    """Per event, the milliseconds from the event to the other node answering."""
    results = {}
    for who in NODES:
        tool.start(who)
    try:
        for event in ("kill -9", "SIGTERM", "link down"):
            times = []
            for _ in range(rounds):
                active = wait_answer()
                other = [n for n in NODES if n != active][0]
                time.sleep(rng.uniform(0.5, 1.0))
                begin = time.monotonic()
                if event == "link down":
                    lab.link(active, False)
                elif event == "kill -9":
                    # The whole process group: keepalived's VRRP child too.
                    os.killpg(tool.procs[active].pid, signal.SIGKILL)
                else:
                    tool.procs[active].send_signal(signal.SIGTERM)
                answered = first_answer_from(other, begin)
                if answered is None:
                    sys.exit(f"failover-vip: {tool.label}: {other} never answered after {event}")
                times.append((answered - begin) * 1000)
                if event == "link down":
                    lab.link(active, True)
                else:
                    tool.procs[active].wait()
                    if event == "kill -9":
                        tool.after_kill(active)
                    tool.start(active)
                # Settle: the restarted (or reconnected) node back, one answering.
                time.sleep(2.5)
            results[event] = times
    finally:
        tool.stop_all()
    return results


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


def main(binary, rounds, seed, slow_rounds):
    ensure({"keepalived": "keepalived", "ip": "iproute2"})
    rng = random.Random(seed)
    lab = Lab()
    try:
        lab.enter_client()
        wait_answer_ready = time.monotonic()
        tools = [StandbyProxy(lab, binary), Keepalived(lab, "0.1")]
        results = {tool.label: race(lab, tool, rounds, rng) for tool in tools}
        slow = Keepalived(lab, "1")
        results[slow.label] = race(lab, slow, slow_rounds, rng)
    finally:
        lab.close()
    print(f"floating address {VIP}, client probing every ms; ms from the event to the first "
          f"answer from the other node ({rounds} rounds each; keepalived default {slow_rounds})")
    print(f"{'event':<10} {'tool':<52} {'min':>7} {'median':>7} {'p99':>7} {'max':>7}")
    for event in ("kill -9", "SIGTERM", "link down"):
        for label, per_event in results.items():
            t = per_event[event]
            print(f"{event:<10} {label:<52} {min(t):7.1f} {statistics.median(t):7.1f} "
                  f"{percentile(t, 99):7.1f} {max(t):7.1f}")
        ours = results[tools[0].label][event]
        theirs = results[tools[1].label][event]
        print(f"{'':<10} {'ratio keepalived 0.1 / standby-proxy':<52} "
              f"{min(theirs) / min(ours):7.2f} {statistics.median(theirs) / statistics.median(ours):7.2f} "
              f"{percentile(theirs, 99) / percentile(ours, 99):7.2f} {max(theirs) / max(ours):7.2f}")
