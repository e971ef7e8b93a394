"""Compare every host's live state with the rendered desired state, strictly read-only.

One shell script per host (all hosts at once, `survey`) reads what is live: the packages the roles
install, whether the services run (and are enabled, where the host has systemd), the postmulti
instances, each instance's effective `postconf -n` and `postconf -M`, every rendered file as
`mailforge.installed` reports it (sha256, mode, owner, whether a map's database is current), and
the loaded firewall rules (`iptables-save`, `ip6tables-save`). A second round trip, only for hosts
where a file differs, reads those files back for a unified diff. Nothing on any host is written,
reloaded or restarted.

The desired state is the rendered tree (`render` + `write_tree`); `compare` holds the comparison,
one function per concern, and `firewall` the canonical form both rulesets are brought to.
`verify` rolls the same items up into its host rows.

Every item is in sync, drifted, missing or unexpected (live but absent from the inventory).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from ..inventory import Inventory
from ..remote import HostShell, HostUnreachable
from ..results import Result, Run
from .compare import (
    BIG_MAP_LINES,
    DIFF_LINES,
    MAP_EXAMPLES,
    TLS_DIFFERS,
    compare_files,
    compare_firewall,
    compare_host,
    compare_instances,
    compare_packages,
    compare_postconf,
    compare_services,
    compare_tls_files,
    local_postconf,
    map_diff,
    parse_postconf,
    unified,
)
from .firewall import canonical_lines, canonical_rendered, firewall_method, kernel_canonical, ruleset, textual_canonical
from .model import DRIFTED, IN_SYNC, MISSING, UNEXPECTED, Desired, DriftError, Item
from .survey import MARK, expected_packages, parse_sections, read_back, role_packages, survey_script

__all__ = [
    "BIG_MAP_LINES",
    "DIFF_LINES",
    "DRIFTED",
    "IN_SYNC",
    "MAP_EXAMPLES",
    "MARK",
    "MISSING",
    "TLS_DIFFERS",
    "UNEXPECTED",
    "Desired",
    "DriftError",
    "Item",
    "Report",
    "audit",
    "audit_host",
    "canonical_lines",
    "canonical_rendered",
    "compare_files",
    "compare_firewall",
    "compare_host",
    "compare_instances",
    "compare_packages",
    "compare_postconf",
    "compare_services",
    "compare_tls_files",
    "desired_state",
    "expected_packages",
    "firewall_method",
    "kernel_canonical",
    "local_postconf",
    "map_diff",
    "parse_postconf",
    "parse_sections",
    "read_back",
    "role_packages",
    "shipped_tls",
    "ruleset",
    "survey_script",
    "textual_canonical",
    "unified",
]


@dataclass
class Report:
    """Every item of every host audited, and how long it took."""

    cluster: str
    hosts: list[str]
    items: list[Item]
    seconds: float = 0.0
    firewall_method: str = ""  # how the rendered rules were canonicalised: kernel or textual

    @property
    def drifted(self) -> list[Item]:
        return [i for i in self.items if i.status != IN_SYNC]


def desired_state(inventory: Inventory, render_dir: Path, manifest: dict, hosts: list[str], tls: dict[str, dict[str, str]] | None = None) -> dict[str, Desired]:
    """What each of `hosts` should be: its manifest entries, its rendered files, its group's packages,
    and the sha256 of each TLS file shipped to it (`tls`: host -> path -> sha256; not rendered files:
    they hold private keys, so they are not in the render tree or the manifest)."""
    group_of = {h.name: h.group for h in inventory.hosts}
    desired = {}
    for host in hosts:
        files = manifest["hosts"][host]["files"]
        desired[host] = Desired(host, group_of[host], files, render_dir / host, expected_packages(group_of[host], files), dict((tls or {}).get(host, {})))
    return desired


def audit_host(d: Desired, shell: HostShell) -> list[Item]:
    """Survey one host, compare, and attach a diff to every file whose bytes differ."""
    result = shell.run(survey_script(d), timeout=300)
    sections = parse_sections(result.stdout.decode(errors="replace"))
    if "end" not in sections:
        raise DriftError(
            f"{d.host}: could not read its state (exit {result.returncode}): {result.stderr.decode(errors='replace').strip()[-300:] or 'no output'}"
        )
    items, differing = compare_host(d, sections)
    if differing:
        live = read_back(shell, differing)
        by_path = {i.name: i for i in items if i.kind in ("map", "file")}
        for path in differing:
            rendered = d.local(path).read_bytes()
            data = live.get(path, b"")
            item = by_path[path]
            item.diff = (
                map_diff(data, rendered, path) if item.kind == "map" else unified(data.decode(errors="replace"), rendered.decode(errors="replace"), path)
            )
    return items


def audit(
    inventory: Inventory,
    render_dir: Path,
    manifest: dict,
    shells: dict[str, HostShell],
    hosts: list[str] | set[str] | None = None,
    workers: int = 32,
    tls: dict[str, dict[str, str]] | None = None,
) -> Report:
    """Compare every host (or `hosts`) with the rendered tree and the TLS files shipped (`tls`:
    host -> path -> sha256), all at once. Raises DriftError naming every host that could not be
    reached or read."""
    started = time.monotonic()
    audited = [h for h in inventory.names if h in shells and (hosts is None or h in hosts)]
    desired = desired_state(inventory, render_dir, manifest, audited, tls)
    errors: dict[str, str] = {}

    def one(host: str) -> list[Item]:
        try:
            return audit_host(desired[host], shells[host])
        except (HostUnreachable, DriftError) as exc:
            errors[host] = str(exc)
            return []

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(audited)))) as pool:
        results = list(pool.map(one, audited))
    if errors:
        raise DriftError(
            "could not read every host, so drift cannot say whether the cluster is in sync: " + "; ".join(errors[h] for h in audited if h in errors)
        )
    items = [i for host_items in results for i in host_items]
    return Report(inventory.topology.cluster, audited, items, time.monotonic() - started, firewall_method())


def shipped_tls(inventory: Inventory, fingerprints=None) -> dict[str, dict[str, str]]:
    """The sha256 of every TLS file deploy ships, by host and host path (`fingerprints` of the controller's
    store: the commands pass `signing.fingerprints`, TLS files and DKIM keys; default `tls.material.fingerprints`,
    since drift sits below the DKIM store, which writes DNS records): what drift and verify compare the live
    files with, by hash only."""
    from ..tls import material, store_of

    store = store_of(inventory.topology.cluster)
    try:
        return (fingerprints or material.fingerprints)(inventory, store)
    except OSError as exc:
        raise DriftError(
            f"the controller's TLS store {store} has no {exc.filename}: `mailforge deploy` prepares it, and drift and verify compare "
            "the hosts' TLS files with what it ships (run them from the controller that deploys)"
        ) from None


def results_of(report: Report, warnings: list | None = None) -> Run:
    """The report in the result shape every command shares (`results.Run`): one result per item."""
    counts: dict[str, int] = {}
    for item in report.items:
        counts[item.status] = counts.get(item.status, 0) + 1
    results = [Result(i.host, i.label, i.status, i.status == IN_SYNC, detail=i.detail, data=asdict(i)) for i in report.items]
    return Run(
        "drift",
        report.cluster,
        results,
        warnings=list(warnings or []),
        hosts=report.hosts,
        summary={"seconds": round(report.seconds, 3), "firewall_canonicalised_by": report.firewall_method, "counts": counts},
    )
