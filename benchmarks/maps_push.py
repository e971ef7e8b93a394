#!/usr/bin/env python3
"""Benchmark: `mailforge maps` with 1,000,000 recipients on the lab cluster.

Needs the example lab up (`mailforge lab up inventories/example`). In one run, on copies of the
example inventory whose users.txt holds N local parts (x its 2 domains = 2N addresses):

  source -> map     load the inventory, render and write relay_recipients (in process),
                    against the floor: one buffered write of the same bytes;
  first push        `maps --force` from the example's 15 recipients to the big list: survey,
                    diff, upload, postmap on both relays and the core, rename, lookup;
  one address       one inline address added: only relay_recipients (relays) and
                    virtual_mailboxes (core) move, once per host; against postmap's own time
                    for that map on a relay (the part no tool can avoid);
  no change         the same sources again: nothing pushed; against one `docker exec true`;
  hash vs lmdb      postmap of the 1M map on a relay, both types.

The lab is put back to the example's recipients at the end.

    .venv/bin/python benchmarks/maps_push.py [--local-parts 500000] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "inventories" / "example"
MAILFORGE = Path(sys.executable).parent / "mailforge"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def engine() -> dict[str, str]:
    from mailforge.lab import engine_environment

    return engine_environment()


def timed(argv: list[str], env=None) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800)
    return time.perf_counter() - started, result


def maps(inventory: Path, *extra: str) -> tuple[float, dict]:
    seconds, result = timed([str(MAILFORGE), "maps", str(inventory), "--lab", "--json", *extra])
    if result.returncode != 0:
        raise SystemExit(f"maps {inventory} failed ({result.returncode}): {result.stderr[-2000:]}")
    envelope = json.loads(result.stdout)  # docs/json.md: the summary says changed and pushed per host
    maps = [r["data"] for entry in envelope["hosts"].values() for r in entry["results"] if r["name"] != "push"]
    return seconds, {**envelope["summary"], "hosts": envelope["summary"]["pushed"], "maps": maps}


def host_seconds(env, container: str, script: str) -> float:
    """Wall time of a script inside a container, measured inside it (no exec overhead)."""
    timer = (
        "import subprocess, sys, time; s = time.perf_counter(); "
        "subprocess.run(sys.argv[1], shell=True, check=True, capture_output=True); print(time.perf_counter() - s)"
    )
    result = subprocess.run(["docker", "exec", container, "python3", "-c", timer, script], capture_output=True, text=True, env=env, timeout=600)
    if result.returncode != 0:
        raise SystemExit(f"{script!r} failed in {container}: {result.stderr[-1000:]}")
    return float(result.stdout.strip().splitlines()[-1])


def variant(root: Path, name: str, local_parts: int, extra_address: str | None = None) -> Path:
    target = root / name
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns(".mailforge"))
    width = len(str(local_parts))
    (target / "users.txt").write_text("".join(f"user{i:0{width}d}\n" for i in range(local_parts)))
    if extra_address:
        text = (target / "topology.yml").read_text().replace("  addresses:\n", f"  addresses:\n    - {extra_address}\n", 1)
        (target / "topology.yml").write_text(text)
    return target


def source_to_map(inventory: Path, scratch: Path, repeat: int) -> tuple[float, float]:
    """(median seconds of load + render + write of relay_recipients, median seconds of the floor)."""
    from mailforge.inventory import load_inventory
    from mailforge.render import render
    from mailforge.write import write_file

    ours, floor = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        inv = load_inventory(inventory)
        rendered = render(inv)["relay1"]["/etc/postfix/relay_recipients"]
        write_file(scratch / "relay_recipients", rendered, None)
        ours.append(time.perf_counter() - started)
        data = (scratch / "relay_recipients").read_bytes()
        started = time.perf_counter()
        with open(scratch / "floor", "wb") as handle:
            handle.write(data)
        floor.append(time.perf_counter() - started)
    return statistics.median(ours), statistics.median(floor)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--local-parts", type=int, default=500_000, help="local parts in users.txt (x 2 domains)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    env = engine()
    results: dict[str, object] = {"recipients": 2 * args.local_parts}

    with tempfile.TemporaryDirectory(prefix="mailforge-bench-") as tmp:
        root = Path(tmp)
        big = variant(root, "big", args.local_parts)
        plus_one = variant(root, "plus-one", args.local_parts, "newcomer@example.com")

        say("source -> rendered map ...")
        ours, floor = source_to_map(big, root, args.repeat)
        results["source_to_map_s"], results["source_to_map_floor_s"] = round(ours, 3), round(floor, 4)

        say("first push of the big map (maps --force) ...")
        maps(EXAMPLE, "--force")
        seconds, report = maps(big, "--force")
        results["first_push_s"] = round(seconds, 2)
        results["first_push_maps"] = {h: v["pushed"] for h, v in report["hosts"].items()}

        say("postmap on a relay, hash and lmdb ...")
        subprocess.run(
            ["docker", "exec", "mf-example-relay1", "sh", "-c", "cp /etc/postfix/relay_recipients /tmp/bench_map; chmod 644 /tmp/bench_map"],
            env=env,
            check=True,
        )
        hash_runs = [host_seconds(env, "mf-example-relay1", "rm -f /tmp/bench_map.db; postmap -c /etc/postfix hash:/tmp/bench_map") for _ in range(args.repeat)]
        lmdb_runs = [
            host_seconds(env, "mf-example-relay1", "rm -f /tmp/bench_map.lmdb; postmap -c /etc/postfix lmdb:/tmp/bench_map") for _ in range(args.repeat)
        ]
        subprocess.run(["docker", "exec", "mf-example-relay1", "sh", "-c", "rm -f /tmp/bench_map*"], env=env)
        results["postmap_hash_s"] = round(statistics.median(hash_runs), 2)
        results["postmap_lmdb_s"] = round(statistics.median(lmdb_runs), 2)

        say("one address changed, back and forth ...")
        one = []
        for _ in range(args.repeat):
            seconds, report = maps(plus_one)
            one.append(seconds)
            results["one_address_maps"] = {h: v["pushed"] for h, v in report["hosts"].items()}
            results["one_address_added_removed"] = sorted({(m["added"], m["removed"]) for m in report["maps"] if m["changed"]})
            maps(big)
        results["one_address_s"] = round(statistics.median(one), 2)

        say("no change ...")
        maps(big)
        nothing = []
        for _ in range(args.repeat):
            seconds, report = maps(big)
            assert report["changed"] is False, report
            nothing.append(seconds)
        results["no_change_s"] = round(statistics.median(nothing), 2)
        exec_floor = [timed(["docker", "exec", "mf-example-relay1", "true"], env)[0] for _ in range(args.repeat)]
        results["docker_exec_true_s"] = round(statistics.median(exec_floor), 3)
        started = time.perf_counter()
        subprocess.run([str(MAILFORGE), "validate", str(big)], capture_output=True, timeout=600)
        results["validate_big_s"] = round(time.perf_counter() - started, 2)

        say("putting the example's recipients back ...")
        maps(EXAMPLE, "--force")

    results["ratios"] = {
        "source_to_map_vs_floor": round(results["source_to_map_s"] / results["source_to_map_floor_s"], 1),
        "one_address_vs_postmap_hash": round(results["one_address_s"] / results["postmap_hash_s"], 2),
        "no_change_vs_docker_exec": round(results["no_change_s"] / results["docker_exec_true_s"], 1),
        "lmdb_vs_hash_postmap": round(results["postmap_lmdb_s"] / results["postmap_hash_s"], 2),
    }
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for key, value in results.items():
            print(f"{key:32} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
