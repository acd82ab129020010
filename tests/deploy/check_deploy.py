#!/usr/bin/env python3
"""Checks deploy/ against a real brokk and a real Prometheus (Debian's), both on free loopback
ports: Prometheus scrapes brokk every second with deploy/prometheus/brokk.rules.yml loaded, a
client connects and disconnects, and the close reason closed_by_client is read back through
Prometheus' HTTP API. Then every query of the Grafana dashboard and every alerting rule runs
through the same API: each must parse, and each metric it names must exist in brokk's scrape.

    check_deploy.py BROKK_BIN

Standard library only. Exits non-zero with a message on the first failure.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "brokk.json"
RULES = REPO / "deploy" / "prometheus" / "brokk.rules.yml"
DEADLINE = 30.0


def fail(message: str) -> None:
    print(f"deploy-check: FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what: str, check, deadline: float = DEADLINE):
    end = time.monotonic() + deadline
    while True:
        try:
            result = check()
            if result:
                return result
        except OSError:
            pass
        if time.monotonic() > end:
            fail(f"{what}: not within {deadline:.0f}s")
        time.sleep(0.2)


def http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read()


def dashboard_queries() -> list:
    """Static checks of the dashboard JSON; returns its PromQL expressions."""
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    if variables.get("datasource", {}).get("type") != "datasource":
        fail("the dashboard needs a datasource variable (importable and provisionable)")
    ids, exprs = set(), []
    for panel in dash["panels"]:
        if panel["id"] in ids:
            fail(f"duplicate panel id {panel['id']}")
        ids.add(panel["id"])
        grid = panel["gridPos"]
        if grid["x"] + grid["w"] > 24:
            fail(f"panel {panel['title']!r} is wider than the grid")
        if panel["type"] == "row":
            continue
        for item in [panel] + panel["targets"]:
            if item.get("datasource", {}).get("uid") != "${datasource}":
                fail(f"panel {panel['title']!r}: datasource is not ${{datasource}}")
        if not panel["targets"]:
            fail(f"panel {panel['title']!r} has no query")
        exprs += [(panel["title"], t["expr"]) for t in panel["targets"]]
    return exprs


def rule_queries() -> list:
    """The alerting rules' expressions, read back from Prometheus (which parsed the file)."""
    return [(r["name"], r["query"]) for r in api_rules()]


PROM = ""


def api(path: str, **params) -> dict:
    url = f"{PROM}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    try:
        body = json.loads(http_get(url))
    except urllib.error.HTTPError as error:
        # Prometheus answers a bad query with 400 and the parser's message in the body.
        fail(f"{params or path}: {error.read().decode(errors='replace')}")
    if body.get("status") != "success":
        fail(f"{url}: {body}")
    return body["data"]


def api_rules() -> list:
    groups = api("rules")["groups"]
    return [rule for group in groups if group["name"] == "brokk" for rule in group["rules"]]


def mqtt_connect_disconnect(port: int) -> None:
    """A 3.1.1 CONNECT, its CONNACK, then DISCONNECT: one close with reason closed_by_client."""
    client_id = b"deploy-check"
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(client_id).to_bytes(2, "big") + client_id
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(bytes([0x10, len(body)]) + body)
        connack = s.recv(4)
        if connack[:1] != b"\x20" or connack[3:4] != b"\x00":
            fail(f"CONNACK {connack!r}")
        s.sendall(b"\xe0\x00")
        s.recv(1)


def start_brokk(binary: str, work: Path):
    mqtt, metrics = free_port(), free_port()
    config = work / "broker.toml"
    config.write_text(
        f'[listeners.tcp]\nbind = "127.0.0.1:{mqtt}"\n[metrics]\nbind = "127.0.0.1:{metrics}"\n'
        '[admin]\nbind = "127.0.0.1:0"\n'
    )
    log = open(work / "brokk.log", "wb")
    proc = subprocess.Popen([binary, "--config", str(config)], stdout=log, stderr=log)
    wait_until("brokk serves /metrics", lambda: http_get(f"http://127.0.0.1:{metrics}/metrics"))
    return proc, mqtt, metrics


def start_prometheus(work: Path, metrics: int):
    port = free_port()
    config = work / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {RULES}\n"
        "scrape_configs:\n  - job_name: brokk\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{metrics}']\n"
    )
    log = open(work / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=log,
    )
    return proc, f"http://127.0.0.1:{port}"


def check_live(binary: str, work: Path) -> None:
    global PROM
    brokk, mqtt, metrics = start_brokk(binary, work)
    prometheus, PROM = start_prometheus(work, metrics)
    try:
        wait_until("Prometheus ready", lambda: http_get(f"{PROM}/-/ready"))
        mqtt_connect_disconnect(mqtt)
        query = 'brokk_connections_closed_total{reason="closed_by_client"}'

        def closed():
            result = api("query", query=query)["result"]
            return result and float(result[0]["value"][1]) >= 1

        wait_until(f"Prometheus sees {query} >= 1", closed)
        print(f"deploy-check: Prometheus scraped brokk and reads {query} >= 1")

        wait_until(
            "every brokk rule loaded and evaluated",
            lambda: len(api_rules()) == 6 and all(r["health"] == "ok" for r in api_rules()),
        )
        names = set(api("label/__name__/values"))
        queries = dashboard_queries() + rule_queries()
        for title, expr in queries:
            used = set(re.findall(r"\b(?:brokk|process)_[a-z_]+\b", expr))
            missing = used - names
            if missing:
                fail(f"{title!r} uses {sorted(missing)}, which brokk does not export")
            promql = expr.replace("$__rate_interval", "1m").replace("$instance", ".*")
            api("query", query=promql)
        print(f"deploy-check: {len(queries)} dashboard and rule queries run against brokk's metrics")
    finally:
        for proc in (prometheus, brokk):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    if len(sys.argv) != 2:
        fail("usage: check_deploy.py BROKK_BIN")
    dashboard_queries()
    with tempfile.TemporaryDirectory(prefix="deploy-check.") as work:
        try:
            check_live(sys.argv[1], Path(work))
        except SystemExit:
            for name in ("brokk.log", "prometheus.log"):
                path = Path(work) / name
                if path.exists():
                    tail = path.read_text(errors="replace").splitlines()[-15:]
                    print(f"--- {name} ---", *tail, sep="\n", file=sys.stderr)
            raise


if __name__ == "__main__":
    os.environ.setdefault("NO_COLOR", "1")
    main()
