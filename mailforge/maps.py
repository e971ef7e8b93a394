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
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from .errors import MailforgeError
from .remote import HostShell
from .render import Tree
from .render.files import POSTFIX_RELOAD, POSTMAP, RenderedFile

# Maps whose entries are the recipients: the guard against a truncated export applies to them.
RECIPIENT_MAPS = frozenset({"relay_recipients", "virtual_mailboxes"})
# The database file postmap makes for each indexed table type.
DATABASE_SUFFIX = {"hash": ".db", "btree": ".db", "lmdb": ".lmdb", "cdb": ".cdb"}
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
        return {"host": self.host, "map": self.path, "changed": self.changed, "missing": self.live_sha256 is None,
                "database_current": self.database_current, "live_entries": self.live_entries, "entries": self.entries,
                "added": self.added, "removed": self.removed, "added_examples": self.added_examples,
                "removed_examples": self.removed_examples}


def map_files(tree: Tree) -> dict[str, dict[str, RenderedFile]]:
    """The lookup tables of every host: the Postfix files other than main.cf and master.cf."""
    result = {}
    for host, files in tree.items():
        tables = {path: f for path, f in files.items() if f.table_type and f.config_directory}
        if tables:
            result[host] = tables
    return result


def _digest(rendered: RenderedFile) -> str:
    hasher = hashlib.sha256()
    for piece in rendered.pieces():
        hasher.update(piece.encode("utf-8"))
    return hasher.hexdigest()


def _entries(text: bytes | str) -> set[bytes]:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return {line for line in data.split(b"\n") if line.strip() and not line.lstrip().startswith(b"#")}


def _survey_script(tables: dict[str, RenderedFile]) -> str:
    """Prints `SHA256|- DB_CURRENT(0|1) PATH` per map: one round trip per host."""
    lines = []
    for path, f in tables.items():
        database = shlex.quote(path + DATABASE_SUFFIX.get(f.table_type, "")) if f.action == POSTMAP else ""
        check = f'[ -f {database} ] && [ ! {shlex.quote(path)} -nt {database} ] && db=1 || db=0' if database else "db=1"
        lines.append(f'if [ -f {shlex.quote(path)} ]; then sha=$(sha256sum < {shlex.quote(path)} | cut -d" " -f1); else sha=-; fi; '
                     f'{check}; echo "$sha $db {path}"')
    return "\n".join(lines)


def survey(shells: dict[str, HostShell], tables: dict[str, dict[str, RenderedFile]], workers: int = 16) -> list[MapChange]:
    """Compare every host's live maps with the rendered ones, all hosts at once."""
    shared_digests: dict[int, str] = {}

    def digest(f: RenderedFile) -> str:
        key = id(f.content)  # the relays share one recipients map: hash it once
        if key not in shared_digests:
            shared_digests[key] = _digest(f)
        return shared_digests[key]

    wanted = {host: {path: (f, digest(f)) for path, f in files.items()} for host, files in tables.items()}
    rendered_entries: dict[int, set[bytes]] = {}

    def new_entries(f: RenderedFile) -> set[bytes]:
        key = id(f.content)
        if key not in rendered_entries:
            rendered_entries[key] = _entries("".join(f.pieces()))
        return rendered_entries[key]

    def one_host(host: str) -> list[MapChange]:
        shell = shells[host]
        result = shell.run(_survey_script({p: f for p, (f, _) in wanted[host].items()}))
        if result.returncode != 0:
            raise MapsError(f"{host}: could not read its maps: {result.stderr.decode(errors='replace').strip()[-300:]}")
        live = {}
        for line in result.stdout.decode().splitlines():
            sha, db, path = line.split(" ", 2)
            live[path] = (None if sha == "-" else sha, db == "1")
        changes = []
        for path, (f, sha) in wanted[host].items():
            live_sha, db_current = live.get(path, (None, False))
            change = MapChange(host, path, f, sha, live_sha, db_current)
            changes.append(change)
        return changes

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(wanted)))) as pool:
        changes = [c for host_changes in pool.map(one_host, sorted(wanted)) for c in host_changes]

    # Only maps whose bytes differ are read back and compared line by line.
    def count(change: MapChange) -> None:
        if change.live_sha256 == change.sha256:
            return  # same bytes: nothing to count (a million-line map costs nothing when unchanged)
        new = new_entries(change.rendered)
        change.entries = len(new)
        old: set[bytes] = set()
        if change.live_sha256 is not None:
            result = shells[change.host].run(f"cat {shlex.quote(change.path)}")
            if result.returncode != 0:
                raise MapsError(f"{change.host}: could not read {change.path}: {result.stderr.decode(errors='replace').strip()}")
            old = _entries(result.stdout)
        change.live_entries = len(old) if change.live_sha256 is not None else None
        added, removed = new - old, old - new
        change.added, change.removed = len(added), len(removed)
        change.added_examples = sorted(x.decode(errors="replace") for x in added)[:EXAMPLES] if added else []
        change.removed_examples = sorted(x.decode(errors="replace") for x in removed)[:EXAMPLES] if removed else []

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(changes) or 1))) as pool:
        list(pool.map(count, changes))
    return changes


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
            refusals.append(Refusal(c, f"would lose {c.removed:,} of {c.live_entries:,} entries "
                                       f"({c.removed / c.live_entries:.1%}, more than the {max_shrink:.0%} allowed)"))
    return refusals


def _stage_script(change: MapChange) -> str:
    """Receive the new map on stdin beside the live one, give it the manifest's owner and mode, and
    check it with postmap (compiled for indexed types, looked up for cidr/regexp): any warning fails."""
    f = change.rendered
    staged = shlex.quote(change.path + STAGED)
    conf = shlex.quote(f.config_directory)
    if f.action == POSTMAP:
        check = f"postmap -c {conf} {f.table_type}:{staged}"
    else:
        check = f"postmap -c {conf} -q mailforge-probe {f.table_type}:{staged} >/dev/null"
    return (f"set -eu; umask 077; cat > {staged}; chown {f.owner}:{f.group} {staged}; chmod {f.mode} {staged}; "
            f"{check} 2>{staged}.err || true; if [ -s {staged}.err ]; then cat {staged}.err >&2; rm -f {staged}*; exit 1; fi; "
            f"rm -f {staged}.err")


def _go_live_script(changes: list[MapChange]) -> str:
    """Rename every staged database, then its source, into place; reload the instances that read a
    changed cidr/regexp map into memory; then look one entry of each changed indexed map up live."""
    lines = ["set -eu"]
    reload = set()
    for c in changes:
        f = c.rendered
        path, staged = shlex.quote(c.path), shlex.quote(c.path + STAGED)
        if f.action == POSTMAP:
            suffix = DATABASE_SUFFIX.get(f.table_type, "")
            lines.append(f"mv -f {staged}{suffix} {path}{suffix}")
        lines.append(f"mv -f {staged} {path}")
        if f.action == POSTFIX_RELOAD:
            reload.add(f.config_directory)
    for conf in sorted(reload):
        lines.append(f"postfix -c {shlex.quote(conf)} reload 2>&1")
    return "\n".join(lines)


def _sample_lookup(change: MapChange) -> tuple[str, str] | None:
    """A key and the value the live map must now answer for it (first entry of the new map)."""
    for piece in change.rendered.pieces():
        for line in piece.split("\n"):
            if line.strip() and not line.startswith("#"):
                key, _, value = line.partition(" ")
                return key, value.strip()
    return None


@dataclass
class PushResult:
    host: str
    pushed: list[str] = field(default_factory=list)
    error: str | None = None
    reloaded: bool = False


def push(shells: dict[str, HostShell], changes: list[MapChange], order: list[list[str]], workers: int = 16) -> list[PushResult]:
    """Stage and check the changed maps on every host at once, then make them live a batch of hosts
    at a time (`order`), each host checked with a live lookup before the next batch; a failure
    stops the rollout and leaves the remaining hosts on their working maps."""
    by_host: dict[str, list[MapChange]] = {}
    for c in changes:
        if c.changed:
            by_host.setdefault(c.host, []).append(c)
    results = {host: PushResult(host) for host in by_host}

    def stage(host: str) -> None:
        for c in by_host[host]:
            data = b"".join(piece.encode("utf-8") for piece in c.rendered.pieces())
            result = shells[host].run(_stage_script(c), stdin=data)
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
            probe = shells[host].run(f"postmap -c {shlex.quote(c.rendered.config_directory)} -q {shlex.quote(key)} "
                                     f"{c.rendered.table_type}:{shlex.quote(c.path)}")
            if probe.stdout.decode().strip() != value:
                results[host].error = f"{c.path}: after the swap, {key} looks up as {probe.stdout.decode().strip()!r}, not {value!r}"
                return

    for batch in order:
        hosts = [h for h in batch if h in by_host]
        if not hosts:
            continue
        with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
            list(pool.map(go_live, hosts))
        if any(results[h].error for h in hosts):
            break
    for host in by_host:  # hosts never reached by the rollout keep their maps; drop what was staged
        if not results[host].pushed:
            shells[host].run("rm -f " + " ".join(shlex.quote(c.path + STAGED) + "*" for c in by_host[host]))
    return list(results.values())


def rollout_order(inventory, batch: int = 1) -> list[list[str]]:
    """Cores first (they must know a new mailbox before a relay accepts mail for it), then the
    relays and MX proxies `batch` at a time."""
    t = inventory.topology
    order = [[c.name for c in t.cores]] if t.cores else []
    relays = [r.name for r in t.relays]
    order += [relays[i:i + batch] for i in range(0, len(relays), batch)]
    return order
