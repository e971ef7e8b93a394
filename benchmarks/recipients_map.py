#!/usr/bin/env python3
"""Benchmark: rendering a Postfix relay_recipients map of a million addresses.

Measures, in one run on the same input, mailforge rendering
`local@domain OK` for every local part x every hosted domain against two
baselines:

  floor       writing the exact bytes mailforge produced to a file with one
              buffered write (nothing can be faster than that);
  shell loop  the classic how-to, run by bash on the same input files:
                for i in $(cat domain-list.txt); do for y in $(cat user-list.txt); do
                  echo "$y@$i OK" >> relay_recipients; done; done

and checks that mailforge's map and the shell loop's file hold the same set
of lines (mailforge's two '#' header lines aside).  Exits 1 if they differ.

    .venv/bin/python benchmarks/recipients_map.py [--local-parts 10000] [--domains 100]
        [--repeat 5] [--repeat-shell 1] [--skip-shell] [--json]

See benchmarks/README.md for what the numbers mean.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mailforge
from mailforge.inventory import Topology, load_inventory
from mailforge.inventory.recipients import RecipientSet
from mailforge.render.files import POSTMAP, RenderedFile
from mailforge.render.maps import relay_recipients
from mailforge.write import write_file

GOAL = 3.0  # the project's goal: render + write within this factor of the floor

SHELL_LOOP = 'for i in $(cat domain-list.txt); do for y in $(cat user-list.txt); do echo "$y@$i OK" >> relay_recipients; done; done'

CLUSTER = "bench"


# --- input -------------------------------------------------------------------


def make_local_parts(n: int) -> list[str]:
    width = max(5, len(str(n)))
    return [f"user{i:0{width}d}" for i in range(1, n + 1)]


def make_domains(n: int) -> list[str]:
    width = max(3, len(str(n)))
    return [f"d{i:0{width}d}.example" for i in range(1, n + 1)]


def topology_data(domains: list[str]) -> dict:
    """Minimal valid topology: the domains, one relay, one core, recipients from users.txt."""
    return {
        "cluster": CLUSTER,
        "domains": list(domains),
        "recipients": {"local_parts_file": "users.txt"},
        "relays": [{"name": "relay1", "fqdn": "relay1.bench.example", "address": "192.0.2.21"}],
        "cores": [{"name": "core", "fqdn": "core.bench.example", "address": "192.0.2.30"}],
        "firewall": {"admin_networks": ["192.0.2.0/24"]},
    }


def topology_yaml(domains: list[str]) -> str:
    lines = [f"cluster: {CLUSTER}", "domains:"]
    lines += [f"  - {d}" for d in domains]
    lines += [
        "recipients:",
        "  local_parts_file: users.txt",
        "relays:",
        "  - name: relay1",
        "    fqdn: relay1.bench.example",
        "    address: 192.0.2.21",
        "cores:",
        "  - name: core",
        "    fqdn: core.bench.example",
        "    address: 192.0.2.30",
        "firewall:",
        "  admin_networks: [192.0.2.0/24]",
    ]
    return "\n".join(lines) + "\n"


def prepare(work: Path, local_parts: list[str], domains: list[str]) -> None:
    """The shell loop's inputs and a mailforge inventory, in the same temp dir."""
    users = "".join(f"{u}\n" for u in local_parts)
    (work / "user-list.txt").write_text(users, encoding="utf-8")
    (work / "domain-list.txt").write_text("".join(f"{d}\n" for d in domains), encoding="utf-8")
    inventory = work / "inventory"
    inventory.mkdir()
    (inventory / "users.txt").write_text(users, encoding="utf-8")
    (inventory / "topology.yml").write_text(topology_yaml(domains), encoding="utf-8")


# --- the cases -------------------------------------------------------------------


def write_text(path: Path, content, hashed: bool = False) -> None:
    """How mailforge writes a rendered file: mailforge.write.write_file, piece by piece.

    With `hashed`, also the sha256 that `mailforge render` records in manifest.json
    (computed in a second thread while the file is written).
    """
    write_file(path, RenderedFile(content, POSTMAP), {} if hashed else None)


def timed(fn, target: Path | None) -> tuple[float, object]:
    """Seconds `fn` takes; `target` is removed first (untimed) so every write makes a new file."""
    if target is not None:
        target.unlink(missing_ok=True)
    gc.collect()
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def run_shell(work: Path) -> float:
    out = work / "relay_recipients"
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    subprocess.run(["bash", "-c", SHELL_LOOP], cwd=work, check=True)
    return time.perf_counter() - start


def map_lines(data: bytes) -> list[bytes]:
    """The map's entries, sorted, without comment lines."""
    return sorted(line for line in data.splitlines() if line and not line.startswith(b"#"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--local-parts", type=int, default=10000, help="number of local parts (default 10000)")
    parser.add_argument("--domains", type=int, default=100, help="number of hosted domains (default 100)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each Python case; the median is reported (default 5)")
    parser.add_argument("--repeat-shell", type=int, default=1, help="runs of the shell loop (default 1; it takes ~10 s per run)")
    parser.add_argument("--skip-shell", action="store_true", help="do not run the shell loop (its output is then not compared)")
    parser.add_argument("--tmpdir", type=Path, default=None, help="where to make the temp dir (default: the system's)")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON instead of a table")
    args = parser.parse_args(argv)
    if args.local_parts < 1 or args.domains < 1 or args.repeat < 1 or args.repeat_shell < 1:
        parser.error("counts and repeats must be at least 1")

    def log(message: str) -> None:
        print(message, file=sys.stderr if args.json else sys.stdout, flush=True)

    local_parts = make_local_parts(args.local_parts)
    domains = make_domains(args.domains)
    addresses = args.local_parts * args.domains

    with tempfile.TemporaryDirectory(prefix="mailforge-bench-", dir=args.tmpdir) as tmp:
        work = Path(tmp)
        prepare(work, local_parts, domains)
        inventory_dir = work / "inventory"

        topology = Topology.model_validate(topology_data(domains))
        recipients = RecipientSet(local_parts=tuple(sorted(local_parts)), extra={})

        # The exact bytes mailforge produces: what the floor writes.
        data = "".join(relay_recipients(topology, recipients)).encode("utf-8")

        floor_out = work / "floor.map"
        mf_out = work / "mailforge.map"
        src_out = work / "from-source.map"

        def floor():
            with open(floor_out, "wb") as handle:
                handle.write(data)

        def render_only():
            # The map is made piece by piece as it is read: reading every piece is the render.
            return sum(len(piece) for piece in relay_recipients(topology, recipients))

        def render_write():
            write_text(mf_out, relay_recipients(topology, recipients))

        def render_write_hash():
            write_text(mf_out, relay_recipients(topology, recipients), hashed=True)

        def from_source():
            inv = load_inventory(inventory_dir)
            write_text(src_out, relay_recipients(inv.topology, inv.recipients), hashed=True)
            return inv

        def load_only():
            return load_inventory(inventory_dir)

        # (label, key, function, file it writes). Each write goes to a new file, as
        # mailforge's writer does (it fills a fresh staging directory): overwriting the
        # previous run's 26 MB file would add the cost of truncating it to every case.
        cases = [
            ("floor: one buffered write of the same bytes", "floor", floor, floor_out),
            ("mailforge render only", "render", render_only, None),
            ("mailforge render + write", "render_write", render_write, mf_out),
            ("mailforge render + write + sha256 for manifest.json", "render_write_hash", render_write_hash, mf_out),
            ("mailforge load_inventory only (users.txt + topology.yml)", "load", load_only, None),
            ("mailforge from source file: load + render + write + sha256", "from_source", from_source, src_out),
        ]
        times: dict[str, list[float]] = {key: [] for _, key, _, _ in cases}

        log(
            f"mailforge {getattr(mailforge, '__version__', '')} / Python {platform.python_version()} on {platform.machine()}; "
            f"{args.local_parts} local parts x {args.domains} domains = {addresses:,} addresses, {len(data):,} bytes; temp dir {work}"
        )

        # One untimed warm-up of each case (imports, page cache, allocator), then the
        # repeats interleaved so drift in the machine's load hits every case alike.
        for _, _, fn, _ in cases:
            fn()
        for _ in range(args.repeat):
            for _, key, fn, target in cases:
                elapsed, result = timed(fn, target)
                del result
                times[key].append(elapsed)

        # Check what was written: render + write and from-source must be the floor's bytes.
        problems: list[str] = []
        mf_data = mf_out.read_bytes()
        if mf_data != data:
            problems.append("mailforge render + write did not write the rendered text")
        if src_out.read_bytes() != data:
            problems.append("the map rendered from the source files differs from the one rendered in memory")
        mf_lines = map_lines(mf_data)
        expected = sorted(f"{u}@{d} OK".encode() for d in domains for u in local_parts)
        if mf_lines != expected:
            problems.append("mailforge's map is not exactly every local part at every domain")
        if len(mf_data.splitlines()) - len(mf_lines) != 2:
            problems.append("mailforge's map does not have exactly 2 header lines")

        shell_match: bool | None = None
        if not args.skip_shell:
            log(f"running the shell loop ({args.repeat_shell}x, ~10 s each for a million addresses) ...")
            times["shell"] = [run_shell(work) for _ in range(args.repeat_shell)]
            shell_lines = map_lines((work / "relay_recipients").read_bytes())
            shell_match = shell_lines == mf_lines
            if not shell_match:
                only_mf = len(set(mf_lines) - set(shell_lines))
                only_shell = len(set(shell_lines) - set(mf_lines))
                problems.append(
                    f"mailforge and the shell loop differ: {len(mf_lines):,} vs {len(shell_lines):,} lines, "
                    f"{only_mf:,} only in mailforge's, {only_shell:,} only in the shell loop's"
                )

    medians = {key: statistics.median(values) for key, values in times.items()}
    floor_s = medians["floor"]
    ratio = {key: value / floor_s for key, value in medians.items()}
    within_goal = ratio["render_write"] <= GOAL

    if args.json:
        print(
            json.dumps(
                {
                    "local_parts": args.local_parts,
                    "domains": args.domains,
                    "addresses": addresses,
                    "bytes": len(data),
                    "repeat": args.repeat,
                    "repeat_shell": None if args.skip_shell else args.repeat_shell,
                    "python": platform.python_version(),
                    "median_seconds": medians,
                    "runs_seconds": times,
                    "ratio_to_floor": ratio,
                    "goal_ratio": GOAL,
                    "render_write_within_goal": within_goal,
                    "shell_output_matches": shell_match,
                    "problems": problems,
                },
                indent=2,
            )
        )
    else:
        rows = [(label, key) for label, key, _, _ in cases]
        if "shell" in medians:
            rows.append((f"shell loop (bash, {args.repeat_shell} run{'s' if args.repeat_shell > 1 else ''})", "shell"))
        width = max(len(label) for label, _ in rows)
        print()
        print(f"{'case':<{width}}  {'median s':>10}  {'x floor':>9}")
        print(f"{'-' * width}  {'-' * 10}  {'-' * 9}")
        for label, key in rows:
            print(f"{label:<{width}}  {medians[key]:>10.4f}  {ratio[key]:>9.1f}")
        print()
        print(
            f"medians of {args.repeat} runs ({args.repeat_shell if 'shell' in medians else 0} for the shell loop); {addresses:,} addresses, {len(data):,} bytes"
        )
        print(
            f"mailforge render + write is {ratio['render_write']:.1f}x the floor: "
            + (f"within the {GOAL:g}x goal" if within_goal else f"ABOVE the {GOAL:g}x goal")
        )
        if "shell" in medians:
            print(f"mailforge render + write is {medians['shell'] / medians['render_write']:.0f}x faster than the shell loop")
        if shell_match is None:
            print("shell loop skipped: output not compared with it (checked against an independent expansion only)")
        else:
            print(f"mailforge output matches the shell loop's (sorted lines, headers ignored): {'yes' if shell_match else 'NO'}")
        for problem in problems:
            print(f"ERROR: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
