"""The comparison: a host's survey answers against what it should be, one function per concern.

Each `compare_*` function reads the sections of one host's survey (`survey.parse_sections`) and
returns its items; `compare_host` is them in order. The desired side of main.cf and master.cf is
the rendered file read by this controller's own `postconf`, so defaults and spelling compare the
way Postfix sees them, not as text.
"""

from __future__ import annotations

import difflib
import subprocess
from functools import lru_cache
from pathlib import Path

from .. import installed
from ..installed import map_entries
from ..render.files import entry_database_path
from .firewall import canonical_lines, canonical_rendered
from .model import DRIFTED, IN_SYNC, MISSING, UNEXPECTED, Desired, Item
from .survey import FIREWALL_UNIT, HAPROXY_CONFIG, HAPROXY_UNIT, POSTFIX_UNIT, exporters, has_firewall

Sections = dict[str, tuple[str, int]]

DIFF_LINES = 80  # a diff longer than this is cut, saying how many lines were left out
BIG_MAP_LINES = 20_000  # above this, a map's diff is the set difference of its entries, a few of each
MAP_EXAMPLES = 20
ENABLED = {"enabled", "enabled-runtime", "static", "generated", "indirect", "alias"}


# --- diffs ---------------------------------------------------------------------------------------


def unified(live: str, desired: str, name: str, limit: int = DIFF_LINES) -> str:
    """`--- live` / `+++ rendered`: the + lines are what a deploy puts back, the - lines what it removes."""
    lines = list(difflib.unified_diff(live.splitlines(), desired.splitlines(), f"{name} (live)", f"{name} (rendered)", lineterm=""))
    if len(lines) > limit:
        lines = lines[:limit] + [f"... {len(lines) - limit} more diff lines not shown"]
    return "\n".join(lines) + ("\n" if lines else "")


def map_diff(live: bytes, desired: bytes, name: str) -> str:
    """A unified diff for a small map; for a big one, a bounded set difference of its entries."""
    if live.count(b"\n") <= BIG_MAP_LINES and desired.count(b"\n") <= BIG_MAP_LINES:
        return unified(live.decode(errors="replace"), desired.decode(errors="replace"), name)
    old, new = map_entries(live), map_entries(desired)
    added, removed = new - old, old - new
    lines = [f"--- {name} (live, {len(old):,} entries)", f"+++ {name} (rendered, {len(new):,} entries)"]
    for sign, entries in (("-", removed), ("+", added)):
        shown = sorted(entries)[:MAP_EXAMPLES] if len(entries) <= 100_000 else sorted(list(entries)[:100_000])[:MAP_EXAMPLES]
        lines += [sign + e.decode(errors="replace") for e in shown]
        if len(entries) > len(shown):
            lines.append(f"{sign}... and {len(entries) - len(shown):,} more")
    return "\n".join(lines) + "\n"


# --- what postconf says ----------------------------------------------------------------------------


def parse_postconf(text: str) -> dict[str, str]:
    """`postconf -n` output -> {parameter: value}, without config_directory (it says where the file
    was read, which differs between the host and the controller's render directory)."""
    values = {}
    for line in text.splitlines():
        if line.strip():
            key, sep, value = line.partition(" = ")
            values[key if sep else line.rstrip(" =")] = value
    values.pop("config_directory", None)
    return values


def local_postconf(directory: Path) -> dict[str, str]:
    """What the rendered main.cf in `directory` sets, read by the controller's own postconf."""
    result = subprocess.run(["postconf", "-c", str(directory), "-n"], capture_output=True, text=True, timeout=60)
    return parse_postconf(result.stdout)


@lru_cache(maxsize=256)
def _local_main(directory: Path) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(local_postconf(directory).items()))


@lru_cache(maxsize=256)
def _local_master(directory: Path) -> tuple[str, ...]:
    result = subprocess.run(["postconf", "-c", str(directory), "-M"], capture_output=True, text=True, timeout=60)
    return tuple(result.stdout.splitlines())


def _services(text: str) -> dict[str, str]:
    """`postconf -M` output -> {"name/type": the whole line, normalised}."""
    result = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2:
            result[f"{words[0]}/{words[1]}"] = " ".join(words)
    return result


def _postmulti(text: str) -> dict[str, tuple[str, bool]]:
    """`postmulti -l` -> {config directory: (instance name, enabled)}."""
    result = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 4 and words[3].startswith("/"):
            result[words[3]] = (words[0], words[2] == "y")
    return result


def _rendered_directory(d: Desired, directory: str) -> Path:
    """The render directory of instance `directory` (where its main.cf and master.cf are)."""
    main_cf = next(p for p, f in d.files.items() if f.get("config_directory") == directory and p.endswith("/main.cf"))
    return d.local(main_cf).parent


def _compare_values(host: str, kind: str, directory: str, desired: dict, live: dict) -> list[Item]:
    """One item per parameter or service named on either side: main.cf and master.cf alike."""
    items = []
    for key in sorted(set(desired) | set(live)):
        want, have = desired.get(key), live.get(key)
        status = IN_SYNC if want == have else UNEXPECTED if want is None else MISSING if have is None else DRIFTED
        items.append(Item(host, kind, key, status, instance=directory, desired=want, live=have))
    return items


# --- one function per concern ----------------------------------------------------------------------


def compare_packages(d: Desired, sections: Sections) -> list[Item]:
    """Every package the host's roles install is installed (dpkg state ii or hi)."""
    text, _ = sections.get("packages", ("", 1))
    installed_packages = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) == 3:
            installed_packages[parts[0].split(":")[0]] = (parts[1].strip(), parts[2])
    items = []
    for package in d.packages:
        state, version = installed_packages.get(package, ("", ""))
        ok = state.startswith(("ii", "hi"))
        items.append(
            Item(
                d.host,
                "package",
                package,
                IN_SYNC if ok else MISSING,
                desired="installed",
                live=f"installed {version}" if ok else (f"dpkg state {state!r}" if state else "not installed"),
            )
        )
    return items


def compare_services(d: Desired, sections: Sections) -> list[Item]:
    """Postfix running per instance, HAProxy running, and each Postfix exporter running on its
    address; each enabled where the host has systemd, and the unit that loads the rules at boot enabled."""
    units_text, _ = sections.get("systemd", ("no-systemd", 0))
    systemd = "no-systemd" not in units_text
    enabled = dict(line.split(" ", 1) for line in units_text.splitlines() if " " in line) if systemd else {}

    def enabled_state(unit: str) -> tuple[bool, str]:
        if not systemd:
            return True, "n/a (no systemd)"
        state = enabled.get(unit, "unknown")
        return state in ENABLED, state

    items = []
    for directory in d.instances:
        _, rc = sections.get(f"status {directory}", ("", 1))
        ok_enabled, state = enabled_state(POSTFIX_UNIT)
        running = rc == 0
        items.append(
            Item(
                d.host,
                "service",
                f"postfix {directory}",
                IN_SYNC if running and ok_enabled else DRIFTED,
                desired="running, enabled",
                live=f"{'running' if running else 'stopped'}, enabled: {state}",
            )
        )
    if HAPROXY_CONFIG in d.files:
        _, rc = sections.get("haproxy", ("", 1))
        ok_enabled, state = enabled_state(HAPROXY_UNIT)
        items.append(
            Item(
                d.host,
                "service",
                "haproxy",
                IN_SYNC if rc == 0 and ok_enabled else DRIFTED,
                desired="running, enabled",
                live=f"{'running' if rc == 0 else 'stopped'}, enabled: {state}",
            )
        )
    for service, listen in exporters(d).items():
        _, rc = sections.get(f"exporter {service}", ("", 1))
        ok_enabled, state = enabled_state(service)
        items.append(
            Item(
                d.host,
                "service",
                service,
                IN_SYNC if rc == 0 and ok_enabled else DRIFTED,
                desired=f"running on {listen}, enabled",
                live=f"{'running' if rc == 0 else 'not running'} on {listen}, enabled: {state}",
            )
        )
    if has_firewall(d):
        ok_enabled, state = enabled_state(FIREWALL_UNIT)
        items.append(
            Item(d.host, "service", FIREWALL_UNIT, IN_SYNC if ok_enabled else DRIFTED, desired="enabled (loads the rules at boot)", live=f"enabled: {state}")
        )
    return items


def compare_instances(d: Desired, sections: Sections) -> list[Item]:
    """postmulti instances: the rendered ones exist and are enabled; no other."""
    if not d.instances:
        return []
    text, rc = sections.get("postmulti", ("", 1))
    live_instances = _postmulti(text) if rc == 0 else {}
    items = []
    for directory in sorted(set(d.instances) | set(live_instances)):
        name, on = live_instances.get(directory, ("", False))
        if directory not in d.instances:
            items.append(
                Item(
                    d.host,
                    "instance",
                    directory,
                    UNEXPECTED,
                    desired="absent",
                    live=f"{name} ({'enabled' if on else 'disabled'})",
                    detail="a Postfix instance the inventory does not render",
                )
            )
        elif directory not in live_instances:
            items.append(
                Item(
                    d.host,
                    "instance",
                    directory,
                    MISSING,
                    desired="enabled",
                    live="absent",
                    detail="postmulti -l does not list it" if rc == 0 else "postmulti -l failed",
                )
            )
        else:
            items.append(Item(d.host, "instance", directory, IN_SYNC if on else DRIFTED, desired="enabled", live=f"{name} ({'enabled' if on else 'disabled'})"))
    return items


def compare_postconf(d: Desired, sections: Sections) -> list[Item]:
    """The effective main.cf (`postconf -n`) and master.cf (`postconf -M`) of each instance, one
    item per parameter and per service."""
    items = []
    for directory in d.instances:
        rendered = _rendered_directory(d, directory)
        text, rc = sections.get(f"postconf-n {directory}", ("", 1))
        if rc != 0:
            items.append(Item(d.host, "main.cf", "(all parameters)", MISSING, instance=directory, detail=f"postconf -c {directory} -n failed"))
        else:
            items += _compare_values(d.host, "main.cf", directory, dict(_local_main(rendered)), parse_postconf(text))
        text, rc = sections.get(f"postconf-M {directory}", ("", 1))
        if rc != 0:
            items.append(Item(d.host, "master.cf", "(all services)", MISSING, instance=directory, detail=f"postconf -c {directory} -M failed"))
        else:
            items += _compare_values(d.host, "master.cf", directory, _services("\n".join(_local_master(rendered))), _services(text))
    return items


def compare_files(d: Desired, sections: Sections) -> tuple[list[Item], list[str]]:
    """Every rendered file on disk as `installed` reports it: maps (content and database) and the
    others (content, mode, owner); and the paths whose bytes differ, to read back for a diff."""
    live_files = installed.parse(sections.get("files", ("", 1))[0])
    items, differing = [], []
    for path, meta in d.files.items():
        kind = "map" if meta.get("table_type") else "file"
        live = live_files.get(path)
        if live is None or live.sha256 is None or live.symlink:
            items.append(Item(d.host, kind, path, MISSING, instance=meta.get("config_directory"), desired=meta["sha256"], live="absent"))
            continue
        problems = installed.mismatches(live, meta, entry_database_path(path, meta))
        if installed.CONTENT_DIFFERS in problems:
            differing.append(path)
        items.append(
            Item(
                d.host,
                kind,
                path,
                DRIFTED if problems else IN_SYNC,
                instance=meta.get("config_directory"),
                desired=meta["sha256"],
                live=live.sha256,
                detail="; ".join(problems),
            )
        )
    return items, differing


TLS_DIFFERS = "sha256 differs from the shipment (contents not shown: it may hold a private key)"


def compare_tls_files(d: Desired, sections: Sections) -> list[Item]:
    """The TLS keys and certificates shipped to the host (`tls.material.shipment`), by sha256 only:
    a file that holds a private key is never read back, diffed or shown; a deploy ships it again."""
    live_files = installed.parse(sections.get("tls", ("", 1))[0])
    items = []
    for path, sha256 in d.tls.items():
        live = live_files.get(path)
        if live is None or live.sha256 is None:
            items.append(Item(d.host, "tls file", path, MISSING, desired=sha256, live="absent"))
        else:
            same = live.sha256 == sha256
            items.append(Item(d.host, "tls file", path, IN_SYNC if same else DRIFTED, desired=sha256, live=live.sha256, detail="" if same else TLS_DIFFERS))
    return items


def compare_firewall(d: Desired, sections: Sections) -> list[Item]:
    """The loaded rules (iptables-save, ip6tables-save) against the rendered ones, as the kernel prints them."""
    items = []
    for path, meta in d.files.items():
        if not meta["action"].endswith("tables-restore"):
            continue
        family = 6 if path.endswith("v6") else 4
        tool = "ip6tables" if family == 6 else "iptables"
        text, rc = sections.get(tool, ("", 1))
        want, method = canonical_rendered(d.local(path).read_text(), family)
        if rc != 0:
            items.append(Item(d.host, "firewall", tool, MISSING, desired=f"{path} loaded", live=f"{tool}-save failed", detail=method))
            continue
        have = canonical_lines(text)
        if have == want:
            rules = sum(1 for line in want if line.startswith("-A "))
            items.append(Item(d.host, "firewall", tool, IN_SYNC, desired=f"{path} loaded", live=f"{rules} rules, as rendered", detail=method))
        else:
            missing = sum(1 for line in want if line not in have and line.startswith(("-A", ":")))
            extra = sum(1 for line in have if line not in want and line.startswith(("-A", ":")))
            items.append(
                Item(
                    d.host,
                    "firewall",
                    tool,
                    DRIFTED,
                    desired=f"{path} loaded",
                    live=f"{missing} rendered lines not loaded, {extra} loaded lines not rendered",
                    detail=f"loaded ruleset differs ({method} canonical form)",
                    diff=unified("\n".join(have), "\n".join(want), f"{d.host} {tool}-save"),
                )
            )
    return items


def compare_host(d: Desired, sections: Sections) -> tuple[list[Item], list[str]]:
    """The items of one host, and the paths of files whose bytes differ (read back for a diff)."""
    files, differing = compare_files(d, sections)
    items = (
        compare_packages(d, sections)
        + compare_services(d, sections)
        + compare_instances(d, sections)
        + compare_postconf(d, sections)
        + files
        + compare_tls_files(d, sections)
        + compare_firewall(d, sections)
    )
    return items, differing
