"""Three nats-servers (JetStream, clustered with routes) and brokk nodes joined through them,
on 127.0.0.{101..103} / 127.0.0.{111..} with free ports, for the cluster benchmarks
(bench/cluster-takeover, bench/cluster-throughput). Needs nats-server on PATH or in /usr/sbin.
"""
import os
import shutil
import socket
import subprocess
import time


def free_port(host):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host, port, limit=40.0):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{host}:{port} did not open")


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def brokk_binary(root):
    """BROKK_BIN, else target/release/brokk, else target/debug/brokk."""
    return os.environ.get("BROKK_BIN") or next(
        p for p in (os.path.join(root, "target/release/brokk"),
                    os.path.join(root, "target/debug/brokk"))
        if os.path.exists(p))


def start_nats(work, procs):
    """Three clustered nats-servers; returns their client URLs."""
    nats_bin = shutil.which("nats-server") or "/usr/sbin/nats-server"
    hosts = [f"127.0.0.{100 + i}" for i in (1, 2, 3)]
    cports = [free_port(h) for h in hosts]
    rports = [free_port(h) for h in hosts]
    routes = ",".join(f"nats://{h}:{p}" for h, p in zip(hosts, rports))
    for i, h in enumerate(hosts):
        procs.append(subprocess.Popen(
            [nats_bin, "--server_name", f"nats{i}", "-a", h, "-p", str(cports[i]), "-js",
             "-sd", os.path.join(work, f"nats{i}"), "--cluster_name", "bench",
             "--cluster", f"nats://{h}:{rports[i]}", "--routes", routes],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for h, p in zip(hosts, cports):
        wait_port(h, p)
    return [f"nats://{h}:{p}" for h, p in zip(hosts, cports)]


def start_nodes(work, brokk, procs, count=3, nats_urls=None):
    """`count` brokk nodes (in memory); with `nats_urls` they form a cluster. Returns
    [(host, port, Popen)] once every node listens (and joined)."""
    nodes = []
    for i in range(1, count + 1):
        host = f"127.0.0.{110 + i}"
        port = free_port(host)
        conf = os.path.join(work, f"n{i}.toml")
        with open(conf, "w") as f:
            f.write(f'[listeners.tcp]\nbind = "{host}:{port}"\n[metrics]\nenabled = false\n'
                    f'[admin]\nenabled = false\n[storage]\nbackend = "memory"\n')
            if nats_urls:
                urls = ", ".join(f'"{u}"' for u in nats_urls)
                f.write(f'[cluster]\nenabled = true\nnode = "n{i}"\nnats = [{urls}]\n')
        p = subprocess.Popen([brokk, "--config", conf], stdout=subprocess.DEVNULL,
                             stderr=open(os.path.join(work, f"n{i}.log"), "w"))
        procs.append(p)
        nodes.append((host, port, p))
    for i, (host, port, _) in enumerate(nodes, start=1):
        if nats_urls:
            log = os.path.join(work, f"n{i}.log")
            deadline = time.time() + 60
            while "cluster node joined" not in open(log).read():
                if time.time() > deadline:
                    raise SystemExit(f"node n{i} did not join:\n" + open(log).read())
                time.sleep(0.1)
        wait_port(host, port)
    return nodes


def stop(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
