"""Compare every host's live state with the rendered desired state, strictly read-only.

One shell script per host (all hosts at once) reads what is live: the packages the roles install,
whether the services run (and are enabled, where the host has systemd), the postmulti instances,
each instance's effective `postconf -n` and `postconf -M`, the sha256, mode and owner of every
rendered file and whether each map's database is current, and the loaded firewall rules
(`iptables-save`, `ip6tables-save`). A second round trip, only for hosts where a file differs,
reads those files back for a unified diff. Nothing on any host is written, reloaded or restarted.

The desired state is the rendered tree (`render` + `write_tree`): main.cf and master.cf are read by
the controller's own `postconf` (verify's `_local_postconf`), and the rendered rules files are
canonicalised the way the kernel prints them (`iptables-restore` into a throw-away network
namespace, then `iptables-save`), or by a textual normaliser where that cannot run.

Every item is in sync, drifted, missing or unexpected (live but absent from the inventory).
"""

from __future__ import annotations

import base64
import difflib
import ipaddress
import re
import shlex
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

from .errors import MailforgeError
from .maps import DATABASE_SUFFIX
from .remote import HostShell, HostUnreachable
from .topology import Inventory

IN_SYNC, DRIFTED, MISSING, UNEXPECTED = "in sync", "drifted", "missing", "unexpected"
MARK = "@@mailforge-drift@@"
DIFF_LINES = 80  # a diff longer than this is cut, saying how many lines were left out
BIG_MAP_LINES = 20_000  # above this, a map's diff is the set difference of its entries, a few of each
MAP_EXAMPLES = 20
# systemd units whose "enabled" state drift reads, by what the host runs.
POSTFIX_UNIT, HAPROXY_UNIT, FIREWALL_UNIT = "postfix", "haproxy", "netfilter-persistent"
ENABLED = {"enabled", "enabled-runtime", "static", "generated", "indirect", "alias"}


class DriftError(MailforgeError):
    """drift could not run: a host unreachable, or its state could not be read."""


@dataclass
class Item:
    """One thing on one host, compared: a package, a service, a parameter, a file, a ruleset."""

    host: str
    kind: str  # package, service, instance, main.cf, master.cf, map, file, firewall
    name: str
    status: str
    instance: str | None = None  # the Postfix config directory a main.cf/master.cf/map item belongs to
    desired: str | None = None
    live: str | None = None
    detail: str = ""
    diff: str = ""

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}" + (f" ({self.instance})" if self.instance and self.kind in ("main.cf", "master.cf") else "")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Report:
    cluster: str
    hosts: list[str]
    items: list[Item]
    seconds: float = 0.0
    firewall_method: str = ""  # how the rendered rules were canonicalised: kernel or textual

    @property
    def drifted(self) -> list[Item]:
        return [i for i in self.items if i.status != IN_SYNC]

    def as_dict(self) -> dict:
        counts: dict[str, int] = {}
        for item in self.items:
            counts[item.status] = counts.get(item.status, 0) + 1
        return {"cluster": self.cluster, "in_sync": not self.drifted, "seconds": round(self.seconds, 3),
                "firewall_canonicalised_by": self.firewall_method, "counts": counts, "hosts": self.hosts,
                "items": [i.as_dict() for i in self.items]}


# --- what the roles install: read from the roles themselves ------------------------------------


def role_packages() -> dict[str, list[str]]:
    """Ansible group -> the packages its roles install: playbooks/site.yml's roles, their meta
    dependencies, and every `*_packages` list in their defaults/main.yml."""
    import yaml

    from .deploy import PLAYBOOK, ROLES

    def dependencies(role: str, seen: list[str]) -> list[str]:
        if role in seen:
            return seen
        meta = ROLES / role / "meta" / "main.yml"
        deps = (yaml.safe_load(meta.read_text()) or {}).get("dependencies") or [] if meta.is_file() else []
        for dep in deps:
            dependencies(dep["role"] if isinstance(dep, dict) else dep, seen)
        seen.append(role)
        return seen

    result: dict[str, list[str]] = {}
    for play in yaml.safe_load(PLAYBOOK.read_text()) or []:
        roles: list[str] = []
        for role in play.get("roles") or []:
            dependencies(role["role"] if isinstance(role, dict) else role, roles)
        packages: list[str] = []
        for role in roles:
            defaults = ROLES / role / "defaults" / "main.yml"
            values = (yaml.safe_load(defaults.read_text()) or {}) if defaults.is_file() else {}
            for key, value in values.items():
                if key.endswith("_packages") and isinstance(value, list):
                    packages += [p for p in value if p not in packages]
        for group in str(play.get("hosts", "")).split(","):
            result.setdefault(group.strip(), [])
            result[group.strip()] += [p for p in packages if p not in result[group.strip()]]
    return result


# --- the desired state ------------------------------------------------------------------------


@dataclass
class Desired:
    """What one host should be, from the rendered tree."""

    host: str
    group: str
    files: dict[str, dict]  # the manifest's entries: path -> {sha256, mode, owner, group, action, ...}
    directory: Path  # render_dir/host
    packages: list[str]

    @property
    def instances(self) -> list[str]:
        return sorted({f["config_directory"] for f in self.files.values() if f.get("config_directory")})

    def local(self, path: str) -> Path:
        return self.directory / path.lstrip("/")


def desired_state(inventory: Inventory, render_dir: Path, manifest: dict, hosts: list[str]) -> dict[str, Desired]:
    from .deploy import ansible_inventory

    groups = ansible_inventory(inventory, render_dir, manifest)["all"]["children"]
    group_of = {host: group for group, members in groups.items() for host in members["hosts"]}
    packages = role_packages()
    return {host: Desired(host, group_of[host], manifest["hosts"][host]["files"], render_dir / host, packages.get(group_of[host], []))
            for host in hosts}


@lru_cache(maxsize=256)
def _local_master(directory: Path) -> tuple[str, ...]:
    result = subprocess.run(["postconf", "-c", str(directory), "-M"], capture_output=True, text=True, timeout=60)
    return tuple(result.stdout.splitlines())


@lru_cache(maxsize=256)
def _local_main(directory: Path) -> tuple[tuple[str, str], ...]:
    from .verify import _local_postconf

    return tuple(sorted(_local_postconf(directory).items()))


# --- reading a host: one script, sections between markers ----------------------------------------


def survey_script(d: Desired) -> str:
    """Every read-only command for one host, in one POSIX shell script. Each section prints
    `MARK name`, the command's output, then `MARK rc N`."""
    q = shlex.quote
    lines = [
        f"m={q(MARK)}",
        's() { printf "%s %s\\n" "$m" "$1"; shift; "$@" 2>/dev/null; printf "\\n%s rc %s\\n" "$m" "$?"; }',
        'systemd_units() { if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then '
        'for u in "$@"; do printf "%s %s\\n" "$u" "$(systemctl is-enabled "$u" 2>/dev/null || echo disabled)"; done; '
        'else echo "no-systemd"; fi; }',
    ]
    if d.packages:  # with no package named, dpkg-query would list every package
        lines.append(f"s packages dpkg-query -W -f='${{Package}}\\t${{db:Status-Abbrev}}\\t${{Version}}\\n' {' '.join(q(p) for p in d.packages)}")
    units = [FIREWALL_UNIT] if any(f["action"].endswith("tables-restore") for f in d.files.values()) else []
    if d.instances:
        units.append(POSTFIX_UNIT)
        lines.append("s postmulti postmulti -l")
    if "/etc/haproxy/haproxy.cfg" in d.files:
        units.append(HAPROXY_UNIT)
        lines.append("s haproxy pgrep -x haproxy")
    lines.append(f"s systemd systemd_units {' '.join(units)}")
    for directory in d.instances:
        lines.append(f"s {q('postconf-n ' + directory)} postconf -c {q(directory)} -n")
        lines.append(f"s {q('postconf-M ' + directory)} postconf -c {q(directory)} -M")
        lines.append(f"s {q('status ' + directory)} postfix -c {q(directory)} status")
    # path sha256 mode owner group db(1 current, 0 stale or missing, - not compiled)
    lines.append('f() { if [ -f "$1" ] && [ ! -L "$1" ]; then sha=$(sha256sum < "$1" | cut -d" " -f1); '
                 'st=$(stat -c "%a %U %G" -- "$1"); else sha=- st="- - -"; fi; '
                 'if [ -z "$2" ]; then db=-; elif [ -f "$1$2" ] && [ ! "$1" -nt "$1$2" ]; then db=1; else db=0; fi; '
                 'printf "%s %s %s %s\\n" "$sha" "$st" "$db" "$1"; }')
    checks = []
    for path, meta in d.files.items():
        suffix = DATABASE_SUFFIX.get(meta.get("table_type") or "", "") if meta["action"] == "postmap" else ""
        checks.append(f"f {q(path)} {q(suffix)}")
    lines.append("files() { " + "; ".join(checks) + "; }" if checks else "files() { :; }")
    lines.append("s files files")
    for path in d.files:
        if path.endswith("rules.v4"):
            lines.append("s iptables iptables-save")
        elif path.endswith("rules.v6"):
            lines.append("s ip6tables ip6tables-save")
    lines.append('printf "%s end\\n" "$m"')
    return "\n".join(lines) + "\n"


def parse_sections(text: str) -> dict[str, tuple[str, int]]:
    """`MARK name` ... `MARK rc N` blocks -> {name: (output, rc)}."""
    sections: dict[str, tuple[str, int]] = {}
    name, body = None, []
    for line in text.split("\n"):
        if line.startswith(MARK + " "):
            rest = line[len(MARK) + 1:]
            if rest.startswith("rc ") and name is not None:
                output = "\n".join(body)
                sections[name] = (output[:-1] if output.endswith("\n") else output, int(rest[3:] or 1))
                name, body = None, []
            elif rest == "end":
                sections["end"] = ("", 0)
            else:
                name, body = rest, []
        elif name is not None:
            body.append(line)
    return sections


# --- firewall: the loaded rules against the rendered ones, both as the kernel prints them --------

CTSTATE_ORDER = ["INVALID", "NEW", "RELATED", "ESTABLISHED", "UNTRACKED", "SNAT", "DNAT"]


def ruleset(text: str) -> dict[str, dict]:
    """iptables-save text -> {table: {"policies": {chain: policy}, "rules": {chain: [rule, ...]}}}:
    no comment lines, no counters. Tables with nothing in them (built-in chains only, policy ACCEPT,
    no rule) are left out: the kernel shows such a table once anything has looked at it."""
    tables: dict[str, dict] = {}
    table = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            table = tables.setdefault(line[1:], {"policies": {}, "rules": {}})
        elif table is None or line == "COMMIT":
            continue
        elif line.startswith(":"):
            words = line[1:].split()
            table["policies"][words[0]] = words[1] if len(words) > 1 else "-"
        else:
            line = re.sub(r"^\[\d+:\d+\]\s+", "", line)  # iptables-save -c counters
            words = line.split(None, 2)
            if len(words) >= 2 and words[0] in ("-A", "-I"):
                table["rules"].setdefault(words[1], []).append("-A " + " ".join(line.split()[1:]))
    return {name: t for name, t in tables.items()
            if any(t["rules"].values()) or any(p not in ("ACCEPT", "-") for p in t["policies"].values())
            or set(t["policies"]) - {"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"}}


def canonical_lines(text: str) -> list[str]:
    """The ruleset as comparable lines: per table, the chains and their policies, then each chain's rules in order."""
    lines = []
    for name, table in sorted(ruleset(text).items()):
        lines.append(f"*{name}")
        lines += [f":{chain} {policy}" for chain, policy in sorted(table["policies"].items())]
        for chain in sorted(table["rules"]):
            lines += table["rules"][chain]
        lines.append("COMMIT")
    return lines


def _textual_rule(rule: str, family: int) -> str:
    """A rule as iptables-save prints it, as far as a text rewrite can tell: addresses with their
    prefix, `-m tcp` before --dport, conntrack states in the kernel's order."""
    words = shlex.split(rule)
    out: list[str] = []
    i = 0
    protocol = None
    while i < len(words):
        word = words[i]
        if word in ("-s", "-d", "--source", "--destination") and i + 1 < len(words):
            value = words[i + 1]
            try:
                value = str(ipaddress.ip_network(value, strict=False))
            except ValueError:
                pass
            out += [{"--source": "-s", "--destination": "-d"}.get(word, word), value]
            i += 2
            continue
        if word in ("-p", "--protocol") and i + 1 < len(words):
            protocol = words[i + 1]
            out += ["-p", protocol]
            i += 2
            if protocol in ("tcp", "udp") and any(w in ("--dport", "--sport", "--dports") for w in words[i:]) \
                    and not (i + 1 < len(words) and words[i] == "-m" and words[i + 1] == protocol):
                out += ["-m", protocol]
            continue
        if word in ("--ctstate", "--state") and i + 1 < len(words):
            states = words[i + 1].split(",")
            states.sort(key=lambda s: CTSTATE_ORDER.index(s) if s in CTSTATE_ORDER else len(CTSTATE_ORDER))
            out += [word, ",".join(states)]
            i += 2
            continue
        if word == "--comment" and i + 1 < len(words):
            out += [word, '"' + words[i + 1] + '"']
            i += 2
            continue
        out.append(word)
        i += 1
    return " ".join(out)


def textual_canonical(text: str, family: int) -> str:
    """The rendered rules as the kernel would print them, without asking the kernel."""
    lines = []
    for raw in text.splitlines():
        line = raw.strip()
        lines.append(_textual_rule(line, family) if line.startswith(("-A ", "-I ")) else line)
    return "\n".join(lines) + "\n"


@lru_cache(maxsize=64)
def kernel_canonical(text: str, family: int) -> str | None:
    """Load the rules into a throw-away network namespace and print them back (needs root and
    iptables on the controller); None where that cannot run."""
    tool = "iptables" if family == 4 else "ip6tables"
    try:
        result = subprocess.run(["unshare", "--net", "sh", "-c", f"{tool}-restore && {tool}-save"], input=text,
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 and "*" in result.stdout else None


def canonical_rendered(text: str, family: int) -> tuple[list[str], str]:
    printed = kernel_canonical(text, family)
    if printed is not None:
        return canonical_lines(printed), "kernel"
    return canonical_lines(textual_canonical(text, family)), "textual"


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
    from .maps import _entries

    old, new = _entries(live), _entries(desired)
    added, removed = new - old, old - new
    lines = [f"--- {name} (live, {len(old):,} entries)", f"+++ {name} (rendered, {len(new):,} entries)"]
    for sign, entries in (("-", removed), ("+", added)):
        shown = sorted(entries)[:MAP_EXAMPLES] if len(entries) <= 100_000 else sorted(list(entries)[:100_000])[:MAP_EXAMPLES]
        lines += [sign + e.decode(errors="replace") for e in shown]
        if len(entries) > len(shown):
            lines.append(f"{sign}... and {len(entries) - len(shown):,} more")
    return "\n".join(lines) + "\n"


# --- comparing one host --------------------------------------------------------------------------


def _parse_postconf(text: str) -> dict[str, str]:
    from .verify import _parse_postconf

    values = _parse_postconf("\n".join(line for line in text.splitlines() if line.strip()))
    values.pop("config_directory", None)
    return values


def _services(text: str) -> dict[str, str]:
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


def _main_cf_of(d: Desired, directory: str) -> str:
    return next(p for p, f in d.files.items() if f.get("config_directory") == directory and p.endswith("/main.cf"))


def _compare_values(host: str, kind: str, directory: str, desired: dict, live: dict) -> list[Item]:
    """One item per parameter or service named on either side: main.cf and master.cf alike."""
    items = []
    for key in sorted(set(desired) | set(live)):
        want, have = desired.get(key), live.get(key)
        status = IN_SYNC if want == have else UNEXPECTED if want is None else MISSING if have is None else DRIFTED
        items.append(Item(host, kind, key, status, instance=directory, desired=want, live=have))
    return items


def compare_host(d: Desired, sections: dict[str, tuple[str, int]]) -> tuple[list[Item], list[str]]:
    """The items of one host, and the paths of files whose bytes differ (read back for a diff)."""
    items: list[Item] = []
    host = d.host

    # Packages the roles install.
    text, _ = sections.get("packages", ("", 1))
    installed = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) == 3:
            installed[parts[0].split(":")[0]] = (parts[1].strip(), parts[2])
    for package in d.packages:
        state, version = installed.get(package, ("", ""))
        ok = state.startswith(("ii", "hi"))
        items.append(Item(host, "package", package, IN_SYNC if ok else MISSING, desired="installed",
                          live=f"installed {version}" if ok else (f"dpkg state {state!r}" if state else "not installed")))

    # Services: running per instance and for HAProxy; enabled where the host has systemd.
    units_text, _ = sections.get("systemd", ("no-systemd", 0))
    systemd = "no-systemd" not in units_text
    enabled = dict(line.split(" ", 1) for line in units_text.splitlines() if " " in line) if systemd else {}

    def enabled_state(unit: str) -> tuple[bool, str]:
        if not systemd:
            return True, "n/a (no systemd)"
        state = enabled.get(unit, "unknown")
        return state in ENABLED, state

    for directory in d.instances:
        _, rc = sections.get(f"status {directory}", ("", 1))
        ok_enabled, state = enabled_state(POSTFIX_UNIT)
        running = rc == 0
        items.append(Item(host, "service", f"postfix {directory}", IN_SYNC if running and ok_enabled else DRIFTED,
                          desired="running, enabled", live=f"{'running' if running else 'stopped'}, enabled: {state}"))
    if "/etc/haproxy/haproxy.cfg" in d.files:
        _, rc = sections.get("haproxy", ("", 1))
        ok_enabled, state = enabled_state(HAPROXY_UNIT)
        items.append(Item(host, "service", "haproxy", IN_SYNC if rc == 0 and ok_enabled else DRIFTED,
                          desired="running, enabled", live=f"{'running' if rc == 0 else 'stopped'}, enabled: {state}"))
    if any(f["action"].endswith("tables-restore") for f in d.files.values()):
        ok_enabled, state = enabled_state(FIREWALL_UNIT)
        items.append(Item(host, "service", FIREWALL_UNIT, IN_SYNC if ok_enabled else DRIFTED, desired="enabled (loads the rules at boot)",
                          live=f"enabled: {state}"))

    # postmulti instances: the rendered ones exist and are enabled; no other.
    if d.instances:
        text, rc = sections.get("postmulti", ("", 1))
        live_instances = _postmulti(text) if rc == 0 else {}
        for directory in sorted(set(d.instances) | set(live_instances)):
            name, on = live_instances.get(directory, ("", False))
            if directory not in d.instances:
                items.append(Item(host, "instance", directory, UNEXPECTED, desired="absent", live=f"{name} ({'enabled' if on else 'disabled'})",
                                  detail="a Postfix instance the inventory does not render"))
            elif directory not in live_instances:
                items.append(Item(host, "instance", directory, MISSING, desired="enabled", live="absent",
                                  detail="postmulti -l does not list it" if rc == 0 else "postmulti -l failed"))
            else:
                items.append(Item(host, "instance", directory, IN_SYNC if on else DRIFTED, desired="enabled",
                                  live=f"{name} ({'enabled' if on else 'disabled'})"))

    # Effective main.cf and master.cf of each instance.
    for directory in d.instances:
        desired_main = dict(_local_main(d.local(_main_cf_of(d, directory)).parent))
        text, rc = sections.get(f"postconf-n {directory}", ("", 1))
        if rc != 0:
            items.append(Item(host, "main.cf", "(all parameters)", MISSING, instance=directory, detail=f"postconf -c {directory} -n failed"))
        else:
            items += _compare_values(host, "main.cf", directory, desired_main, _parse_postconf(text))
        desired_master = _services("\n".join(_local_master(d.local(_main_cf_of(d, directory)).parent)))
        text, rc = sections.get(f"postconf-M {directory}", ("", 1))
        if rc != 0:
            items.append(Item(host, "master.cf", "(all services)", MISSING, instance=directory, detail=f"postconf -c {directory} -M failed"))
        else:
            items += _compare_values(host, "master.cf", directory, desired_master, _services(text))

    # Every rendered file on disk: maps (content and database), and the others (content, mode, owner).
    text, _ = sections.get("files", ("", 1))
    live_files = {}
    for line in text.splitlines():
        parts = line.split(" ", 5)
        if len(parts) == 6:
            live_files[parts[5]] = {"sha256": None if parts[0] == "-" else parts[0], "stat": " ".join(parts[1:4]), "db": parts[4]}
    differing = []
    for path, meta in d.files.items():
        live = live_files.get(path, {"sha256": None, "stat": "- - -", "db": "0"})
        want_stat = f"{int(meta['mode'], 8):o} {meta['owner']} {meta['group']}"
        is_map = bool(meta.get("table_type"))
        kind = "map" if is_map else "file"
        if live["sha256"] is None:
            items.append(Item(host, kind, path, MISSING, instance=meta.get("config_directory"), desired=meta["sha256"], live="absent"))
            continue
        problems = []
        if live["sha256"] != meta["sha256"]:
            problems.append("content differs from the rendered file")
            differing.append(path)
        if live["stat"] != want_stat:
            problems.append(f"mode/owner/group {live['stat']}, rendered {want_stat}")
        if is_map and meta["action"] == "postmap" and live["db"] != "1":
            problems.append("database missing or older than the map: edited without postmap")
        items.append(Item(host, kind, path, DRIFTED if problems else IN_SYNC, instance=meta.get("config_directory"),
                          desired=meta["sha256"], live=live["sha256"], detail="; ".join(problems)))

    # The loaded firewall rules, against the rendered ones as the kernel prints them.
    for path, meta in d.files.items():
        if not meta["action"].endswith("tables-restore"):
            continue
        family = 6 if path.endswith("v6") else 4
        tool = "ip6tables" if family == 6 else "iptables"
        text, rc = sections.get(tool, ("", 1))
        want, method = canonical_rendered(d.local(path).read_text(), family)
        if rc != 0:
            items.append(Item(host, "firewall", tool, MISSING, desired=f"{path} loaded", live=f"{tool}-save failed", detail=method))
            continue
        have = canonical_lines(text)
        if have == want:
            rules = sum(1 for line in want if line.startswith("-A "))
            items.append(Item(host, "firewall", tool, IN_SYNC, desired=f"{path} loaded", live=f"{rules} rules, as rendered", detail=method))
        else:
            missing = sum(1 for line in want if line not in have and line.startswith(("-A", ":")))
            extra = sum(1 for line in have if line not in want and line.startswith(("-A", ":")))
            items.append(Item(host, "firewall", tool, DRIFTED, desired=f"{path} loaded",
                              live=f"{missing} rendered lines not loaded, {extra} loaded lines not rendered",
                              detail=f"loaded ruleset differs ({method} canonical form)",
                              diff=unified("\n".join(have), "\n".join(want), f"{host} {tool}-save")))
    return items, differing


def _read_back(shell: HostShell, paths: list[str]) -> dict[str, bytes]:
    """The live bytes of the files that differ, in one round trip: `MARK path` then the file, base64."""
    script = "; ".join(f"printf '%s %s\\n' {shlex.quote(MARK)} {shlex.quote(p)}; base64 -w0 < {shlex.quote(p)}; echo" for p in paths)
    result = shell.run(script)
    contents: dict[str, bytes] = {}
    lines = result.stdout.decode(errors="replace").split("\n")
    for i, line in enumerate(lines):
        if line.startswith(MARK + " ") and i + 1 < len(lines):
            contents[line[len(MARK) + 1:]] = base64.b64decode(lines[i + 1] or b"")
    return contents


def audit_host(d: Desired, shell: HostShell) -> list[Item]:
    result = shell.run(survey_script(d), timeout=300)
    sections = parse_sections(result.stdout.decode(errors="replace"))
    if "end" not in sections:
        raise DriftError(f"{d.host}: could not read its state (exit {result.returncode}): "
                         f"{result.stderr.decode(errors='replace').strip()[-300:] or 'no output'}")
    items, differing = compare_host(d, sections)
    if differing:
        live = _read_back(shell, differing)
        by_path = {i.name: i for i in items if i.kind in ("map", "file")}
        for path in differing:
            rendered = d.local(path).read_bytes()
            data = live.get(path, b"")
            item = by_path[path]
            item.diff = map_diff(data, rendered, path) if item.kind == "map" else unified(data.decode(errors="replace"),
                                                                                         rendered.decode(errors="replace"), path)
    return items


def audit(inventory: Inventory, render_dir: Path, manifest: dict, shells: dict[str, HostShell],
          hosts: list[str] | None = None, workers: int = 32) -> Report:
    """Compare every host (or `hosts`) with the rendered tree, all at once. Raises DriftError naming
    every host that could not be reached or read."""
    started = time.monotonic()
    hosts = [h for h in inventory.hosts if h in shells and (hosts is None or h in hosts)]
    desired = desired_state(inventory, render_dir, manifest, hosts)
    errors: dict[str, str] = {}

    def one(host: str) -> list[Item]:
        try:
            return audit_host(desired[host], shells[host])
        except (HostUnreachable, DriftError) as exc:
            errors[host] = str(exc)
            return []

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(hosts)))) as pool:
        results = list(pool.map(one, hosts))
    if errors:
        raise DriftError("could not read every host, so drift cannot say whether the cluster is in sync: "
                         + "; ".join(errors[h] for h in hosts if h in errors))
    items = [i for host_items in results for i in host_items]
    return Report(inventory.topology.cluster, hosts, items, time.monotonic() - started, firewall_method())


def firewall_method() -> str:
    """How this controller canonicalises the rendered rules: by loading them into a throw-away
    network namespace (root and iptables here), or with the textual normaliser."""
    probe = "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n"
    return "kernel" if kernel_canonical(probe, 4) is not None else "textual"
