#!/usr/bin/env python3
"""Benchmark: `mailforge dns check` for a cluster hosting many domains, through a slow resolver.

In one run, for each domain count: the inventory is the shipped example with that many hosted
domains; its `dns zone` output (plus test DNS lists) is served by a real NSD on loopback, behind
a UDP proxy that holds every answer for --delay-ms, as a resolver across a network would. Timed:

  dns check    `run_checks` in process, every check of `mailforge dns check` (all must pass);
  baseline     the same number of queries as the check asked, one after the other, through the
               same proxy: what a check that asks one question at a time cannot beat.

A ratio under 1 means the check asked questions concurrently.

    .venv/bin/python benchmarks/dns_check.py [--domains 2,50,300] [--delay-ms 20] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import dns.message
import dns.query

from mailforge import dns as mfdns
from mailforge.inventory import load_inventory

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "inventories" / "example"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def inventory_with(domains: int, root: Path) -> Path:
    """A copy of the example hosting `domains` domains (example.com, example.org, then d3.example.net ...)."""
    target = root / f"inventory-{domains}"
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns(".mailforge"))
    names = ["example.com", "example.org", *(f"d{i}.example.net" for i in range(3, domains + 1))][:domains]
    text = (target / "topology.yml").read_text()
    text = re.sub(r"(?m)^domains:\n(?:  - .*\n)+", "domains:\n" + "".join(f"  - {n}\n" for n in names), text)
    (target / "topology.yml").write_text(text)
    return target


class Nsd:
    """A real NSD serving the topology's `dns zone` output and test DNS lists on 127.0.0.1:port."""

    def __init__(self, topology, root: Path):
        binary = shutil.which("nsd") or "/usr/sbin/nsd"
        root.mkdir(parents=True)
        zones = mfdns.served_zones(topology, mfdns.dnsbl_records(topology), "ns.test")
        for zone, text in zones.items():
            (root / mfdns.zone_file_name(zone)).write_text(text)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        (root / "nsd.conf").write_text(mfdns.nsd_conf(list(zones), str(root), [f"127.0.0.1@{self.port}"]))
        self.process = subprocess.Popen([binary, "-d", "-c", str(root / "nsd.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while "nsd started" not in ((root / "nsd.log").read_text() if (root / "nsd.log").exists() else ""):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"nsd did not start: {(root / 'nsd.log').read_text() if (root / 'nsd.log').exists() else ''}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


class SlowProxy:
    """UDP proxy on loopback holding each answer `delay` seconds; concurrent questions wait concurrently."""

    def __init__(self, upstream_port: int, delay: float, lifetime: float = 900):
        self.upstream, self.delay = ("127.0.0.1", upstream_port), delay
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.settimeout(0.2)
        self.port = self.socket.getsockname()[1]
        self.deadline = time.monotonic() + lifetime  # bounded, whatever happens
        self.running = True
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self) -> None:
        while self.running and time.monotonic() < self.deadline:
            try:
                query, client = self.socket.recvfrom(4096)
            except OSError:
                continue
            threading.Thread(target=self.answer, args=(query, client), daemon=True).start()

    def answer(self, query: bytes, client) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
            up.settimeout(2)
            up.sendto(query, self.upstream)
            try:
                reply = up.recvfrom(65535)[0]
            except OSError:
                return
        time.sleep(self.delay)
        try:
            self.socket.sendto(reply, client)
        except OSError:
            pass

    def stop(self) -> None:
        self.running = False
        self.thread.join(timeout=5)
        self.socket.close()


class CountingQuerier(mfdns.Querier):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.asked = 0
        self.lock = threading.Lock()

    def _ask(self, name, rtype):
        with self.lock:
            self.asked += 1
        return super()._ask(name, rtype)


def measure(domains: int, delay: float, repeat: int, root: Path) -> dict:
    topology = load_inventory(inventory_with(domains, root)).topology
    server = Nsd(topology, root / f"nsd-{domains}")
    proxy = SlowProxy(server.port, delay)
    try:
        check_times, asked = [], 0
        for _ in range(repeat):
            querier = CountingQuerier([("127.0.0.1", proxy.port)], timeout=5)
            started = time.perf_counter()
            checks = mfdns.run_checks(topology, querier)
            check_times.append(time.perf_counter() - started)
            failed = [c for c in checks if not c.ok]
            if failed:
                raise SystemExit(f"{domains} domains: checks failed: {failed[:3]}")
            asked = querier.asked
        base_times = []
        question = dns.message.make_query("example.com", "MX")
        for _ in range(repeat):
            started = time.perf_counter()
            for _ in range(asked):
                dns.query.udp(question, "127.0.0.1", port=proxy.port, timeout=5)
            base_times.append(time.perf_counter() - started)
    finally:
        proxy.stop()
        server.stop()
    check, base = statistics.median(check_times), statistics.median(base_times)
    return {
        "domains": domains,
        "checks": len(checks),
        "queries": asked,
        "check_s": round(check, 3),
        "baseline_s": round(base, 3),
        "ratio": round(check / base, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", default="2,50,300", help="comma-separated domain counts")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="how long the proxy holds each answer")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mailforge-dns-bench-") as tmp:
        for count in (int(n) for n in args.domains.split(",")):
            say(f"{count} domains ...")
            rows.append(measure(count, args.delay_ms / 1000, args.repeat, Path(tmp)))
    if args.json:
        print(json.dumps({"delay_ms": args.delay_ms, "repeat": args.repeat, "rows": rows}, indent=2))
    else:
        print(f"dns check through a resolver holding each answer {args.delay_ms:g} ms (median of {args.repeat})")
        print(f"{'domains':>8} {'checks':>7} {'queries':>8} {'check s':>9} {'baseline s':>11} {'ratio':>6}")
        for r in rows:
            print(f"{r['domains']:>8} {r['checks']:>7} {r['queries']:>8} {r['check_s']:>9.3f} {r['baseline_s']:>11.3f} {r['ratio']:>6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
