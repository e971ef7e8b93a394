"""Regenerate the Postfix maps after the user list changes: compare, guard, push atomically.

The maps are always rendered whole from the sources, so an address removed
from the sources disappears from every host. Each host is asked for the
sha256 of its live maps (one command per host, all hosts at once); only maps
that differ are read back to count what is added and removed, and only those
are pushed, to the hosts that use them. A push compiles the new map beside the
live one (`postmap type:MAP.mailforge-new`) and renames the database, then the
source, into place, so Postfix never reads a half-built table; only maps that
Postfix reads into memory at start (cidr, regexp) need a reload.
"""

from __future__ import annotations

import hashlib
import shlex
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from . import installed
from .errors import MailforgeError
from .installed import map_entries
from .inventory import Inventory, rollout_order
from .remote import HostShell
from .render import Tree
from .render.files import POSTFIX_RELOAD, POSTMAP, RenderedFile, database_suffix
from .results import Result, Run
from .rotation import Rotation, RotationError

# Maps whose entries are the recipients: the guard against a truncated export applies to them.
RECIPIENT_MAPS = frozenset({"relay_recipients", "virtual_mailboxes"})
STAGED = ".mailforge-new"
EXAMPLES = 3


class MapsError(MailforgeError):
    """A map could not be compared or pushed on a host."""


@dataclass
class MapChange:
    """One map on one host: what is live, what the sources say, and the difference."""

    host: str
    path: str
    rendered: RenderedFile
    sha256: str
    live_sha256: str | None = None  # None: the map is missing on the host
    database_current: bool = True
    live_entries: int | None = None  # counted only for maps whose bytes differ
    entries: int | None = None
    added: int = 0
    removed: int = 0
    added_examples: list[str] = field(default_factory=list)
    removed_examples: list[str] = field(default_factory=list)
    data: bytes = field(default=b"", repr=False)  # the rendered map, made once (relays share one copy)

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name

    @property
    def changed(self) -> bool:
        return self.live_sha256 != self.sha256 or not self.database_current

    @property
    def is_recipients(self) -> bool:
        return self.name in RECIPIENT_MAPS

    def as_dict(self) -> dict:
        return {
            "host": self.host,
            "map": self.path,
            "changed": self.changed,
            "missing": self.live_sha256 is None,
            "database_current": self.database_current,
            "live_entries": self.live_entries,
            "entries": self.entries,
            "added": self.added,
            "removed": self.removed,
            "added_examples": self.added_examples,
            "removed_examples": self.removed_examples,
        }


def map_files(tree: Tree) -> dict[str, dict[str, RenderedFile]]:
    """The lookup tables of every host: the Postfix files other than main.cf and master.cf."""
    result = {}
    for host, files in tree.items():
        tables = {path: f for path, f in files.items() if f.table_type and f.config_directory}
        if tables:
            result[host] = tables
    return result


def _examples(lines: set[bytes]) -> list[str]:
    """The first few lines in order; from a huge difference, the first few of a sample of 10,000."""
    pool = lines if len(lines) <= 10_000 else list(lines)[:10_000]
    return [x.decode(errors="replace") for x in sorted(pool)[:EXAMPLES]]


def _survey_script(tables: dict[str, RenderedFile]) -> str:
    """Reports every map as `installed` does (sha256, stat, database current): one round trip per host."""
    return installed.script((path, f.database_path(path)) for path, f in tables.items())


def survey(shells: dict[str, HostShell], tables: dict[str, dict[str, RenderedFile]], workers: int = 16, cache: Path | None = None) -> list[MapChange]:
    """Compare every host's live maps with the rendered ones, all hosts at once.

    `cache` holds the maps this machine last pushed, by sha256: a live map whose sha256 is
    there is read locally instead of from the host. Hosts whose live map is the same compare
    once: two relays with the same list cost one comparison.
    """
    made: dict[int, tuple[bytes, str]] = {}

    def make(f: RenderedFile) -> tuple[bytes, str]:
        """The map's bytes and sha256, made once per content: the relays share one recipients map."""
        key = id(f.content)
        if key not in made:
            data = "".join(f.pieces()).encode("utf-8")
            made[key] = (data, hashlib.sha256(data).hexdigest())
        return made[key]

    wanted = {host: {path: (f, *make(f)) for path, f in files.items()} for host, files in tables.items()}

    def one_host(host: str) -> list[MapChange]:
        shell = shells[host]
        result = shell.run(_survey_script({p: f for p, (f, _, _) in wanted[host].items()}))
        if result.returncode != 0:
            raise MapsError(f"{host}: could not read its maps: {result.stderr.decode(errors='replace').strip()[-300:]}")
        live = installed.parse(result.stdout.decode(errors="replace"))
        changes = []
        for path, (f, data, sha) in wanted[host].items():
            found = live.get(path)
            # A map that is not compiled has no database to be stale (database_current None).
            live_sha, db_current = (found.sha256, found.database_current is not False) if found else (None, False)
            changes.append(MapChange(host, path, f, sha, live_sha, db_current, data=data))
        return changes

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(wanted)))) as pool:
        changes = [c for host_changes in pool.map(one_host, sorted(wanted)) for c in host_changes]

    # Only maps whose bytes differ are compared, line by line, once per (live, new) pair.
    pending: dict[tuple[str | None, str], list[MapChange]] = {}
    for change in changes:
        if change.live_sha256 != change.sha256:
            pending.setdefault((change.live_sha256, change.sha256), []).append(change)

    def live_text(change: MapChange) -> bytes:
        assert change.live_sha256 is not None  # only asked for maps the host has
        cached = cache / change.live_sha256 if cache is not None else None
        if cached is not None and cached.is_file():
            data = cached.read_bytes()
            if hashlib.sha256(data).hexdigest() == change.live_sha256:  # a damaged copy is never trusted
                return data
        result = shells[change.host].run(f"cat {shlex.quote(change.path)}")
        if result.returncode != 0:
            raise MapsError(f"{change.host}: could not read {change.path}: {result.stderr.decode(errors='replace').strip()}")
        return result.stdout

    def compare(group: list[MapChange]) -> None:
        first = group[0]
        new = map_entries(first.data)
        old = map_entries(live_text(first)) if first.live_sha256 is not None else set()
        added, removed = new - old, old - new
        added_examples, removed_examples = _examples(added), _examples(removed)
        for change in group:
            change.entries, change.live_entries = len(new), (len(old) if change.live_sha256 is not None else None)
            change.added, change.removed = len(added), len(removed)
            change.added_examples, change.removed_examples = added_examples, removed_examples

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(pending) or 1))) as pool:
        list(pool.map(compare, pending.values()))
    return changes


def remember(cache: Path, changes: list[MapChange], results: list["PushResult"], prune: bool = True) -> None:
    """Keep, by sha256, the maps that are live now (pushed or unchanged), so the next run compares locally."""
    pushed = {(r.host, path) for r in results for path in r.pushed}
    live: dict[str, MapChange] = {}
    for c in changes:
        if (c.host, c.path) in pushed:
            live[c.sha256] = c
        elif c.live_sha256 is not None and not c.changed:
            live[c.live_sha256] = c
    cache.mkdir(parents=True, exist_ok=True)
    for sha, change in live.items():
        target = cache / sha
        if not target.exists():
            staging = cache / f".{sha}.tmp"
            staging.write_bytes(change.data)
            staging.replace(target)
    # Also kept: what is still live where nothing was pushed (a --check, a refused run).
    keep = set(live) | {c.live_sha256 for c in changes if c.live_sha256 and (c.host, c.path) not in pushed}
    if prune:  # not after a --limit run: the other hosts' maps stay remembered
        for stale in cache.iterdir():
            if stale.name not in keep:
                stale.unlink()


@dataclass
class Refusal:
    change: MapChange
    reason: str


def guard(changes: list[MapChange], max_shrink: float) -> list[Refusal]:
    """Recipient maps that would lose more than `max_shrink` (a share) of their entries, or all of them."""
    refusals = []
    for c in changes:
        if not c.changed or not c.is_recipients or not c.live_entries:
            continue
        if c.entries is None:
            continue
        if c.entries == 0:
            refusals.append(Refusal(c, f"would become empty: all {c.live_entries:,} addresses would go"))
        elif c.removed / c.live_entries > max_shrink:
            refusals.append(
                Refusal(c, f"would lose {c.removed:,} of {c.live_entries:,} entries ({c.removed / c.live_entries:.1%}, more than the {max_shrink:.0%} allowed)")
            )
    return refusals


def _stage_script(change: MapChange) -> str:
    """Receive the new map on stdin beside the live one, give it the manifest's owner and mode, and
    check it with postmap (compiled for indexed types, looked up for cidr/regexp): any warning fails."""
    f = change.rendered
    staged = shlex.quote(change.path + STAGED)
    assert f.config_directory is not None  # map_files keeps only tables of a Postfix instance
    conf = shlex.quote(f.config_directory)
    if f.action == POSTMAP:
        check = f"postmap -c {conf} {f.table_type}:{staged}"
    else:
        check = f"postmap -c {conf} -q mailforge-probe {f.table_type}:{staged} >/dev/null"
    return (
        f"set -eu; umask 077; cat > {staged}; chown {f.owner}:{f.group} {staged}; chmod {f.mode} {staged}; "
        f"{check} 2>{staged}.err || true; if [ -s {staged}.err ]; then cat {staged}.err >&2; rm -f {staged}*; exit 1; fi; "
        f"rm -f {staged}.err"
    )


def _go_live_script(changes: list[MapChange]) -> str:
    """Rename every staged database, then its source, into place; reload the instances that read a
    changed cidr/regexp map into memory; then look one entry of each changed indexed map up live."""
    lines = ["set -eu"]
    reload: set[str] = set()
    for c in changes:
        f = c.rendered
        path, staged = shlex.quote(c.path), shlex.quote(c.path + STAGED)
        if f.action == POSTMAP:
            suffix = database_suffix(f.table_type)
            lines.append(f"mv -f {staged}{suffix} {path}{suffix}")
        lines.append(f"mv -f {staged} {path}")
        if f.action == POSTFIX_RELOAD:
            assert f.config_directory is not None  # map_files keeps only tables of a Postfix instance
            reload.add(f.config_directory)
    for conf in sorted(reload):
        lines.append(f"postfix -c {shlex.quote(conf)} reload 2>&1")
    return "\n".join(lines)


def _sample_lookup(change: MapChange) -> tuple[str, str] | None:
    """A key and the value the live map must now answer for it (first entry of the new map)."""
    for line in change.data.split(b"\n", 50):
        text = line.decode("utf-8", errors="replace")
        if text.strip() and not text.startswith("#"):
            key, _, value = text.partition(" ")
            return key, value.strip()
    return None


@dataclass
class PushResult:
    host: str
    pushed: list[str] = field(default_factory=list)
    error: str | None = None
    reloaded: bool = False
    rotation: list[dict] = field(default_factory=list)  # steps out of the balancer's rotation and back (rotation.Step)


def push(
    shells: dict[str, HostShell], changes: list[MapChange], order: list[list[str]], workers: int = 16, rotation: Rotation | None = None
) -> list[PushResult]:
    """Stage and check the changed maps on every host at once, then make them live a batch of hosts
    at a time (`order`), each host checked with a live lookup before the next batch; a failure
    stops the rollout and leaves the remaining hosts on their working maps. With a `rotation`, the
    relays of a batch leave the balancer's rotation before their maps change and come back once a
    PROXY probe shows they take mail; one that does not stays out and stops the rollout."""
    by_host: dict[str, list[MapChange]] = {}
    for c in changes:
        if c.changed:
            by_host.setdefault(c.host, []).append(c)
    results = {host: PushResult(host) for host in by_host}

    def stage(host: str) -> None:
        for c in by_host[host]:
            result = shells[host].run(_stage_script(c), stdin=c.data)
            if result.returncode != 0:
                results[host].error = f"{c.path}: the new map failed its check, nothing went live: {result.stderr.decode(errors='replace').strip()[-400:]}"
                shells[host].run(f"rm -f {shlex.quote(c.path + STAGED)}*")
                return

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(by_host) or 1))) as pool:
        list(pool.map(stage, sorted(by_host)))
    if any(r.error for r in results.values()):
        for host in by_host:  # nothing goes live anywhere if any host refused its new maps
            shells[host].run("rm -f " + " ".join(shlex.quote(c.path + STAGED) + "*" for c in by_host[host]))
        return list(results.values())

    def go_live(host: str) -> None:
        result = shells[host].run(_go_live_script(by_host[host]))
        if result.returncode != 0:
            results[host].error = f"could not put the new maps in place: {result.stderr.decode(errors='replace').strip()[-400:]}"
            return
        results[host].reloaded = any(c.rendered.action == POSTFIX_RELOAD for c in by_host[host])
        results[host].pushed = [c.path for c in by_host[host]]
        for c in by_host[host]:
            sample = _sample_lookup(c) if c.rendered.action == POSTMAP else None
            if sample is None:
                continue
            key, value = sample
            assert c.rendered.config_directory is not None  # map_files keeps only tables of a Postfix instance
            probe = shells[host].run(
                f"postmap -c {shlex.quote(c.rendered.config_directory)} -q {shlex.quote(key)} {c.rendered.table_type}:{shlex.quote(c.path)}"
            )
            if probe.stdout.decode().strip() != value:
                results[host].error = f"{c.path}: after the swap, {key} looks up as {probe.stdout.decode().strip()!r}, not {value!r}"
                return

    for batch in order:
        hosts = [h for h in batch if h in by_host]
        if not hosts:
            continue
        relays = [h for h in hosts if rotation is not None and h in rotation.plan.relays]
        if relays:
            assert rotation is not None
            try:
                for step in rotation.take_out(relays):
                    results[step.relay].rotation.append(asdict(step))
            except RotationError as exc:
                for h in relays:
                    results[h].error = f"could not take it out of the balancer's rotation, so nothing went live: {exc}"
                break
        with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
            list(pool.map(go_live, hosts))
        if relays:
            assert rotation is not None
            for step in rotation.put_back([h for h in relays if not results[h].error]):
                results[step.relay].rotation.append(asdict(step))
                if not step.ok:
                    results[step.relay].error = f"stays out of the balancer's rotation: {step.detail}"
        if any(results[h].error for h in hosts):
            break
    for host in by_host:  # hosts never reached by the rollout keep their maps; drop what was staged
        if not results[host].pushed:
            shells[host].run("rm -f " + " ".join(shlex.quote(c.path + STAGED) + "*" for c in by_host[host]))
    return list(results.values())


@dataclass
class MapsRun:
    """What one `mailforge maps` run found and did."""

    changes: list[MapChange]
    refusals: list[Refusal]
    results: list[PushResult]
    seconds: float
    checked_only: bool
    hosts: list[str]

    @property
    def changed(self) -> list[MapChange]:
        return [c for c in self.changes if c.changed]

    @property
    def failed(self) -> list[PushResult]:
        return [r for r in self.results if r.error]


def run(
    inventory: Inventory,
    shells: dict[str, HostShell],
    *,
    hosts: list[str] | None = None,
    check: bool = False,
    force: bool = False,
    max_shrink: float = 0.10,
    batch: int = 1,
    cache: Path | None = None,
    rotation: Rotation | None = None,
) -> MapsRun:
    """The maps workflow: render the maps from the sources, compare them with every host's (or `hosts`'),
    refuse a shrink beyond `max_shrink` (a share) unless `force`, push what changed (never with
    `check`), cores first and relays `batch` at a time, and remember what is live now in `cache`."""
    import time

    from .render import render

    started = time.monotonic()
    tables = map_files(render(inventory))
    if hosts is not None:
        tables = {h: files for h, files in tables.items() if h in hosts}
    changes = survey(shells, tables, cache=cache)
    refusals = [] if force else guard(changes, max_shrink)
    results: list[PushResult] = []
    if any(c.changed for c in changes) and not check and not refusals:
        results = push(shells, changes, rollout_order(inventory.hosts, batch), rotation=rotation)
    if not check and cache is not None:
        remember(cache, changes, results, prune=hosts is None)
    return MapsRun(changes, refusals, results, time.monotonic() - started, check, sorted(tables))


def results_of(result: MapsRun, cluster: str, warnings: list | None = None) -> Run:
    """The run in the result shape every command shares: one result per map compared, one per failed push."""
    refused = {(r.change.host, r.change.path): r.reason for r in result.refusals}
    pushed = {(r.host, path) for r in result.results for path in r.pushed}
    results = []
    for c in result.changes:
        key = (c.host, c.path)
        status = "refused" if key in refused else "pushed" if key in pushed else "changed" if c.changed else "in sync"
        results.append(Result(c.host, c.path, status, key not in refused, key in pushed, refused.get(key, ""), c.as_dict()))
    for r in result.failed:
        results.append(Result(r.host, "push", "failed", False, bool(r.pushed), r.error or ""))
    return Run(
        "maps",
        cluster,
        results,
        warnings=list(warnings or []),
        hosts=result.hosts,
        summary={
            "changed": bool(result.changed),
            "checked_only": result.checked_only,
            "seconds": round(result.seconds, 3),
            "refused": [
                {"host": r.change.host, "map": r.change.path, "reason": r.reason, "removed_examples": r.change.removed_examples} for r in result.refusals
            ],
            "pushed": {r.host: {"pushed": r.pushed, "reloaded": r.reloaded, "error": r.error, "rotation": r.rotation} for r in result.results},
        },
    )
