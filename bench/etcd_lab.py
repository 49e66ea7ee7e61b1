"""Cluster mode for `bench/failover --backend etcd`: a 3-member etcd on loopback (Debian's
etcd-server, data on tmpfs, default 1 s election timeout) and three standby-proxy members
(127.0.0.1-3) with the lease TTL at etcd's minimum for that timeout, 2 s
(ceil(1.5 x election timeout)).

Each round signals the active member and measures from the signal to the first status
answer of another member saying it is active; every poll asks all three members, and a poll
in which two say "active" is counted (the goal is none). The signalled member is restarted
and the cluster settles before the next round.
"""
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

ETCD_CLIENT = 25860
ETCD_PEER = 25870
ADMIN_PORT = 25880
SIP_PORT = 25890
ADDRESSES = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
LEASE_TTL_S = 2
TOKEN = "etcd-bench-token"


def status(index):
    url = f"http://{ADDRESSES[index]}:{ADMIN_PORT}/api/v1/status"
    try:
        with urllib.request.urlopen(url, timeout=0.2) as answer:
            return json.load(answer)
    except Exception:
        return None


def roles():
    return [(status(i) or {}).get("role") for i in range(len(ADDRESSES))]


def etcd_healthy(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=0.5) as answer:
            return b'"true"' in answer.read()
    except Exception:
        return False


def wait(condition, what, limit=30.0):
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if condition():
            return
        time.sleep(0.005)
    sys.exit(f"failover bench (etcd): timed out waiting for {what}")


class Lab:
    """etcd and the members, in a folder on tmpfs; `close` stops everything."""

    def __init__(self, binary):
        self.binary = binary
        self.dir = tempfile.mkdtemp(prefix="standby-etcd-bench-", dir="/dev/shm")
        self.etcd = [self.start_etcd(i) for i in range(3)]
        wait(lambda: all(etcd_healthy(ETCD_CLIENT + i) for i in range(3)), "etcd")
        with open(os.path.join(self.dir, "token"), "w") as token:
            token.write(TOKEN)
        self.logs = [open(os.path.join(self.dir, f"n{i}.log"), "a") for i in range(3)]
        self.members = [self.start_member(i) for i in range(3)]

    def start_etcd(self, i):
        peers = ",".join(f"e{j}=http://127.0.0.1:{ETCD_PEER + j}" for j in range(3))
        return subprocess.Popen(
            ["etcd", "--name", f"e{i}", "--data-dir", os.path.join(self.dir, f"e{i}"),
             "--listen-client-urls", f"http://127.0.0.1:{ETCD_CLIENT + i}",
             "--advertise-client-urls", f"http://127.0.0.1:{ETCD_CLIENT + i}",
             "--listen-peer-urls", f"http://127.0.0.1:{ETCD_PEER + i}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{ETCD_PEER + i}",
             "--initial-cluster", peers, "--initial-cluster-token", "standby-bench",
             "--initial-cluster-state", "new"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.dir, f"e{i}.log"), "w"))

    def config(self, i):
        me = ADDRESSES[i]
        endpoints = ", ".join(f'"http://127.0.0.1:{ETCD_CLIENT + j}"' for j in range(3))
        path = os.path.join(self.dir, f"n{i}.toml")
        with open(path, "w") as config:
            config.write(
                f'[node]\nid = "n{i}"\naddress = "{me}"\n\n'
                f'[cluster]\nbackend = "etcd"\nname = "bench"\nendpoints = [{endpoints}]\n'
                f'lease_ttl = "{LEASE_TTL_S}s"\n\n'
                f'[admin]\nlisten = "{me}:{ADMIN_PORT}"\n'
                f'token_file = "{os.path.join(self.dir, "token")}"\n\n'
                f'[store]\npath = "{os.path.join(self.dir, f"n{i}.redb")}"\n\n'
                f'[[frontend]]\nname = "sip"\nkind = "sip"\nlisten = "{me}:{SIP_PORT}"\n'
                f'target = "sip:{me}:{SIP_PORT + 1}"\n')
        return path

    def start_member(self, i):
        return subprocess.Popen([self.binary, "run", "--config", self.config(i)],
                                stdout=subprocess.DEVNULL, stderr=self.logs[i])

    def settled(self):
        now = roles()
        return now.count("active") == 1 and now.count("standby") == len(now) - 1

    def round(self, sig):
        """Signals the active member; (ms until another is active, polls seeing two active)."""
        wait(self.settled, "one active member, the others standby")
        # A random pause first: the cluster settles right after the last failover, which
        # etcd detected on its 500 ms lease-expiry tick, so signalling at once would always
        # hit the same phase of that tick (every kill -9 then looked 2.5 s long).
        time.sleep(random.uniform(0, 1.0))
        active = roles().index("active")
        begin = time.monotonic()
        self.members[active].send_signal(sig)
        overlaps = 0
        while True:
            now = roles()
            overlaps += now.count("active") > 1
            if any(role == "active" for i, role in enumerate(now) if i != active):
                took = (time.monotonic() - begin) * 1000
                break
            if time.monotonic() - begin > 30:
                sys.exit("failover bench (etcd): nobody took over")
            time.sleep(0.001)
        self.members[active].wait()
        self.members[active] = self.start_member(active)
        return took, overlaps

    def close(self):
        for proc in self.members + self.etcd:
            proc.kill()
            proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def measure(binary, rounds, signals):
    """{event: ([ms...], polls with two active)} for each (event, signal)."""
    lab = Lab(binary)
    try:
        results = {}
        for name, sig in signals:
            times, overlaps = [], 0
            for _ in range(rounds):
                took, seen = lab.round(sig)
                times.append(took)
                overlaps += seen
            results[name] = (times, overlaps)
        return results
    finally:
        lab.close()
