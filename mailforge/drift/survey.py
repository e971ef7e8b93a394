"""Reading a host, strictly read-only: one shell script, sections between markers.

The survey script batches every read-only command for one host (packages, services, postmulti,
postconf per instance, every rendered file as `installed` reports it, the loaded rules), so a host
costs one round trip; a second one, only where a file's bytes differ, reads those files back for a
diff. What the roles install (the packages drift expects) is read from the roles themselves.
"""

from __future__ import annotations

import base64
import shlex

from .. import installed
from ..remote import HostShell
from ..render.dkim import OPENDKIM_RELOAD
from ..render.files import EXPORTER_RESTART, entry_database_path
from ..render.outbound import MTA_STS_RESTART, UNBOUND_RELOAD
from .model import Desired

MARK = "@@mailforge-drift@@"
# systemd units whose "enabled" state drift reads, by what the host runs.
POSTFIX_UNIT, HAPROXY_UNIT, FIREWALL_UNIT = "postfix", "haproxy", "netfilter-persistent"
HAPROXY_CONFIG = "/etc/haproxy/haproxy.cfg"
# Package lists a role installs only on hosts with rendered files of an action (the inventory's
# `monitoring`, `tls.outbound`, `dkim`): drift expects each list there and nowhere else.
CONDITIONAL_PACKAGES = {
    "mailforge_postfix_exporter_packages": EXPORTER_RESTART,
    "mailforge_postfix_unbound_packages": UNBOUND_RELOAD,
    "mailforge_postfix_mta_sts_packages": MTA_STS_RESTART,
    "mailforge_postfix_dkim_packages": OPENDKIM_RELOAD,
}
EXPORTER_SETTINGS = "/etc/default/"  # an exporter's settings: /etc/default/<its service>


def role_packages(conditional: bool = False) -> dict[str, list[str]]:
    """Ansible group -> the packages its roles install: playbooks/site.yml's roles, their meta
    dependencies, and every `*_packages` list in their defaults/main.yml. The lists installed on
    every host of the group, or (`conditional`) only those of CONDITIONAL_PACKAGES."""
    return _role_packages(lambda variable: (variable in CONDITIONAL_PACKAGES) == conditional)


def expected_packages(group: str, files: dict[str, dict]) -> list[str]:
    """The packages a host of `group` with these rendered files must have: its roles' own, and a
    conditional role's when a file of that role's action is rendered for it."""
    packages = list(role_packages().get(group, []))
    actions = {f["action"] for f in files.values()}
    for variable, action in CONDITIONAL_PACKAGES.items():
        if action in actions:
            wanted = _role_packages(lambda name, variable=variable: name == variable).get(group, [])
            packages += [p for p in wanted if p not in packages]
    return packages


def exporters(d: Desired) -> dict[str, str]:
    """The Postfix exporters rendered for the host: service -> the address it listens on (from its settings)."""
    found = {}
    for path, meta in d.files.items():
        if meta["action"] == EXPORTER_RESTART and path.startswith(EXPORTER_SETTINGS):
            text = d.local(path).read_text()
            listen = text.split("--web.listen-address=", 1)[1].split()[0].rstrip('"')
            found[path[len(EXPORTER_SETTINGS) :]] = listen
    return found


def _role_packages(counts) -> dict[str, list[str]]:
    import yaml

    from ..resources import SITE_PLAYBOOK, role_dir

    def dependencies(name: str, seen: list[str]) -> list[str]:
        if name in seen:
            return seen
        meta = role_dir(name) / "meta" / "main.yml"
        deps = (yaml.safe_load(meta.read_text()) or {}).get("dependencies") or [] if meta.is_file() else []
        for dep in deps:
            dependencies(dep["role"] if isinstance(dep, dict) else dep, seen)
        seen.append(name)
        return seen

    result: dict[str, list[str]] = {}
    for play in yaml.safe_load(SITE_PLAYBOOK.read_text()) or []:
        roles: list[str] = []
        for entry in play.get("roles") or []:
            dependencies(entry["role"] if isinstance(entry, dict) else entry, roles)
        packages: list[str] = []
        for name in roles:
            defaults = role_dir(name) / "defaults" / "main.yml"
            values = (yaml.safe_load(defaults.read_text()) or {}) if defaults.is_file() else {}
            for key, value in values.items():
                if key.endswith("_packages") and isinstance(value, list) and counts(key):
                    packages += [p for p in value if p not in packages]
        for group in str(play.get("hosts", "")).split(","):
            result.setdefault(group.strip(), [])
            result[group.strip()] += [p for p in packages if p not in result[group.strip()]]
    return result


def has_firewall(d: Desired) -> bool:
    """Whether rules files are rendered for the host (then netfilter-persistent must load them at boot)."""
    return any(f["action"].endswith("tables-restore") for f in d.files.values())


def survey_script(d: Desired) -> str:
    """Every read-only command for one host, in one POSIX shell script. Each section prints
    `MARK name`, the command's output, then `MARK rc N`."""
    q = shlex.quote
    lines = [
        f"m={q(MARK)}",
        's() { printf "%s %s\\n" "$m" "$1"; shift; "$@" 2>/dev/null; printf "\\n%s rc %s\\n" "$m" "$?"; }',
        "systemd_units() { if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then "
        'for u in "$@"; do printf "%s %s\\n" "$u" "$(systemctl is-enabled "$u" 2>/dev/null || echo disabled)"; done; '
        'else echo "no-systemd"; fi; }',
    ]
    if d.packages:  # with no package named, dpkg-query would list every package
        lines.append(f"s packages dpkg-query -W -f='${{Package}}\\t${{db:Status-Abbrev}}\\t${{Version}}\\n' {' '.join(q(p) for p in d.packages)}")
    units = [FIREWALL_UNIT] if has_firewall(d) else []
    if d.instances:
        units.append(POSTFIX_UNIT)
        lines.append("s postmulti postmulti -l")
    if HAPROXY_CONFIG in d.files:
        units.append(HAPROXY_UNIT)
        lines.append("s haproxy pgrep -x haproxy")
    for service, listen in exporters(d).items():
        units.append(service)
        lines.append(f"s {q('exporter ' + service)} pgrep -f -- {q('--web.listen-address=' + listen)}")
    lines.append(f"s systemd systemd_units {' '.join(units)}")
    for directory in d.instances:
        lines.append(f"s {q('postconf-n ' + directory)} postconf -c {q(directory)} -n")
        lines.append(f"s {q('postconf-M ' + directory)} postconf -c {q(directory)} -M")
        lines.append(f"s {q('status ' + directory)} postfix -c {q(directory)} status")
    lines.append(installed.SHELL_FUNCTION)
    checks = [installed.check_command(path, entry_database_path(path, meta)) for path, meta in d.files.items()]
    lines.append("files() { " + "; ".join(checks) + "; }" if checks else "files() { :; }")
    lines.append("s files files")
    if d.tls:  # the shipped keys and certificates: their sha256 only, never read back
        lines.append("tls() { " + "; ".join(installed.check_command(path) for path in d.tls) + "; }")
        lines.append("s tls tls")
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
    name: str | None = None
    body: list[str] = []
    for line in text.split("\n"):
        if line.startswith(MARK + " "):
            rest = line[len(MARK) + 1 :]
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


def read_back(shell: HostShell, paths: list[str]) -> dict[str, bytes]:
    """The live bytes of the files that differ, in one round trip: `MARK path` then the file, base64."""
    script = "; ".join(f"printf '%s %s\\n' {shlex.quote(MARK)} {shlex.quote(p)}; base64 -w0 < {shlex.quote(p)}; echo" for p in paths)
    result = shell.run(script)
    contents: dict[str, bytes] = {}
    lines = result.stdout.decode(errors="replace").split("\n")
    for i, line in enumerate(lines):
        if line.startswith(MARK + " ") and i + 1 < len(lines):
            contents[line[len(MARK) + 1 :]] = base64.b64decode(lines[i + 1] or b"")
    return contents
