"""Deploying a rendered tree with Ansible: the inventory derived from the topology, and the run.

The roles only ship, check and apply what `render` produced; this module tells
them where each host's files are (`mailforge_render_dir`, `mailforge_files`)
and turns ansible-runner's events into per-host results.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .ansible_env import ansible_settings, check_connections
from .errors import MailforgeError
from .hosts import Access, Reach
from .inventory import GROUPS, Inventory
from .remote import HostShell
from .resources import SITE_PLAYBOOK
from .results import Result, Run
from .rotation import RotationPlan


class DeployError(MailforgeError):
    """Ansible could not be run at all (not: a host failed)."""


def ansible_inventory(
    inventory: Inventory,
    render_dir: Path,
    manifest: dict,
    reaches: dict[str, Reach],
    hosts: list[str] | None = None,
    tls_files: dict[str, list[dict]] | None = None,
) -> dict:
    """The Ansible inventory for a topology: groups balancers, relays, mxproxies, cores, each host
    with how it is reached (`hosts.reach_all`), where its rendered files are, and its assembled TLS
    files (`tls.material.assemble`: controller paths only, never their content)."""
    groups: dict[str, dict] = {group: {} for group in GROUPS}
    for host in inventory.hosts:
        if hosts is not None and host.name not in hosts:
            continue
        files = [{"path": path, **meta} for path, meta in sorted(manifest["hosts"][host.name]["files"].items())]
        hostvars = {
            "mailforge_render_dir": str((render_dir / host.name).resolve()),
            "mailforge_files": files,
            "mailforge_tls_files": (tls_files or {}).get(host.name, []),
            **reaches[host.name].ansible_vars(),
        }
        groups[host.group][host.name] = hostvars
    return {
        "all": {
            "vars": {"ansible_python_interpreter": "/usr/bin/python3"},
            "children": {name: {"hosts": members} for name, members in groups.items()},
        }
    }


def refuse_lockout(inventory: Inventory, accesses: dict[str, Access]) -> None:
    """Stop before anything is applied if a host's rendered firewall would not admit the SSH connection
    this deploy itself uses: after the firewall loads, nobody could finish the rollout, nor undo it."""
    from .render.firewall import ssh_admits

    t = inventory.topology
    shut_out = [a for a in accesses.values() if a.seen_from is not None and a.port is not None and not ssh_admits(t, a.seen_from, a.port)]
    if shut_out:
        admitted = ", ".join(t.firewall.admin_networks) or "any address"
        raise DeployError(
            "this deploy would lock mailforge out: "
            + "; ".join(f"{a.name} sees this controller's SSH connection come from {a.seen_from} to port {a.port}" for a in shut_out)
            + f", but its firewall will admit SSH only from {admitted} to port {t.firewall.ssh_port}. Nothing was applied. "
            f"Add that address (or its network) to firewall.admin_networks (or set firewall.ssh_port) in "
            f"{inventory.directory / 'topology.yml'}, or deploy from one of the admin networks"
        )


def relays_changing(inventory: Inventory, render_dir: Path, manifest: dict, shells: dict[str, HostShell], relays: list[str]) -> list[str]:
    """The relays whose live state differs from the rendered one (drift's comparison): the ones a
    deploy will change, so the ones to take out of the balancer's rotation. A relay that cannot be
    read counts as changing: better drained for nothing than changed under traffic."""
    from .drift import IN_SYNC, UNEXPECTED, DriftError, audit

    try:
        report = audit(inventory, render_dir, manifest, shells, set(relays))
    except DriftError:
        return list(relays)
    differs = {i.host for i in report.items if i.status not in (IN_SYNC, UNEXPECTED)}
    return [r for r in relays if r in differs]


@dataclass
class HostResult:
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    messages: list[str] = field(default_factory=list)
    diffs: list[str] = field(default_factory=list)  # unified diffs of the files a run changed or would change (--diff)
    # Seconds from the start of the run to this host's first task and to its last result: shows
    # that relays changed a batch at a time (the intervals of one batch never overlap the next's).
    started: float | None = None
    finished: float | None = None
    rotation: list[dict] = field(default_factory=list)  # the relay's steps out of the balancer's rotation and back (rotation.Step)


@dataclass
class DeployResult:
    hosts: dict[str, HostResult]
    status: str
    rc: int
    log: Path | None = None  # the whole Ansible log, kept when the run failed (runlog)
    log_note: str = ""  # where it is, or why it could not be kept

    @property
    def failed(self) -> bool:
        return self.rc != 0 or any(h.failed or h.unreachable for h in self.hosts.values())


def unified_diffs(diff) -> list[str]:
    """Ansible's --diff results (a dict or a list of them, with before/after texts) as unified diffs."""
    import difflib

    texts = []
    for entry in diff if isinstance(diff, list) else [diff] if diff else []:
        before, after = entry.get("before"), entry.get("after")
        if not isinstance(before, str) or not isinstance(after, str) or before == after:
            continue
        lines = difflib.unified_diff(
            before.splitlines(keepends=True), after.splitlines(keepends=True), entry.get("before_header", "before"), entry.get("after_header", "after")
        )
        texts.append("".join(line if line.endswith("\n") else line + "\n" for line in lines))
    return texts


ROTATION_TASK = "Rotation:"  # the playbook's tasks around a relay batch (site.yml) start with this

Progress = Callable[[str, str, int, int], None]  # host, task, tasks done on that host, tasks seen


class EventTally:
    """Per-host results built from ansible-runner's events as they arrive (for the progress bar), then
    its final stats: results come from structured events, never from parsing Ansible's output."""

    def __init__(
        self,
        hosts: list[str],
        progress: Progress | None = None,
        clock: Callable[[], float] = time.monotonic,
        output: Callable[[str], None] | None = None,
    ):
        self.hosts = {name: HostResult() for name in hosts}
        self.done = {name: 0 for name in hosts}
        self.seen = {name: 0 for name in hosts}
        self.progress = progress
        self.clock = clock
        self.output = output  # given Ansible's own text of each event (-v)
        self.started = clock()

    def __call__(self, event: dict) -> bool:
        if self.output is not None and event.get("stdout"):
            self.output(event["stdout"])
        data = event.get("event_data", {})
        host = data.get("host")
        kind = event.get("event")
        if host not in self.hosts:
            return True
        result = self.hosts[host]
        now = round(self.clock() - self.started, 3)
        if kind == "runner_on_start":
            self.seen[host] += 1
            if result.started is None:
                result.started = now
            if self.progress:
                self.progress(host, data.get("task", ""), self.done[host], self.seen[host])
        if kind in ("runner_on_ok", "runner_on_failed") and str(data.get("task", "")).startswith(ROTATION_TASK):
            try:
                result.rotation.extend(json.loads((data.get("res") or {}).get("stdout") or "[]"))
            except ValueError:
                pass
        if kind in ("runner_on_ok", "runner_item_on_ok") and (data.get("res") or {}).get("changed"):
            result.diffs.extend(unified_diffs(data["res"].get("diff")))
        if kind in ("runner_on_ok", "runner_on_failed", "runner_on_unreachable", "runner_on_skipped"):
            self.done[host] += 1
            result.finished = now
            res = data.get("res", {})
            if kind == "runner_on_failed" and not data.get("ignore_errors"):
                message = res.get("msg") or res.get("stderr") or json.dumps(res)[:300]
                if str(data.get("task", "")).startswith(ROTATION_TASK):
                    kept = [f"{s['relay']} {s['action']}: {s['detail']}" for s in result.rotation if not s.get("ok")]
                    message = "; ".join(kept) or (res.get("stderr") or message)
                result.messages.append(f"{data.get('task')}: {message}")
            elif kind == "runner_on_unreachable":
                result.messages.append(f"unreachable: {res.get('msg', '')}")
            if self.progress:
                self.progress(host, data.get("task", ""), self.done[host], self.seen[host])
        return True

    def results(self, stats: dict, limited: bool = False) -> dict[str, HostResult]:
        """The per-host counts of the play recap; with --limit, only the hosts the run touched."""
        for key, attribute in (("ok", "ok"), ("changed", "changed"), ("failures", "failed"), ("dark", "unreachable"), ("skipped", "skipped")):
            for host, count in (stats.get(key) or {}).items():
                if host in self.hosts:
                    setattr(self.hosts[host], attribute, count)
        if limited:
            return {h: r for h, r in self.hosts.items() if self.seen[h] or r.ok or r.failed or r.unreachable}
        return dict(self.hosts)


def run_playbook(
    inventory: Inventory,
    render_dir: Path,
    manifest: dict,
    reaches: dict[str, Reach],
    *,
    hosts: list[str] | None = None,
    check: bool = False,
    diff: bool = False,
    batch: int = 1,
    progress: Progress | None = None,
    verbosity: int = 0,
    output: Callable[[str], None] | None = None,
    command: str = "deploy",
    rotation: RotationPlan | None = None,
    rotation_shells: dict[str, HostShell] | None = None,
    changing_relays: list[str] | None = None,
    tls_shipment: dict | None = None,
) -> DeployResult:
    """Run playbooks/site.yml through ansible-runner against the topology's hosts (or `hosts`, which
    `hosts.select` chose from --limit), reached as `reaches` says, with the ansible.cfg
    `config_file` chooses. `verbosity` is Ansible's -v count; `output` gets Ansible's own text as
    it comes. When the run fails, its whole log is kept (runlog) and named in the result.
    `changing_relays` leave the balancer's `rotation` while they change (`rotation_shells` reach
    its balancers and relays); never with `check`. `tls_shipment` (`tls.material.shipment`) is assembled
    into 0600 files in the run's private 0700 directory, removed with it after the run."""
    try:
        import ansible_runner
    except ImportError as exc:  # pragma: no cover - a broken install
        raise DeployError(f"ansible-runner is not installed ({exc}); run scripts/setup") from None
    if not SITE_PLAYBOOK.is_file():
        raise DeployError(f"mailforge's Ansible collection is missing ({SITE_PLAYBOOK}): the installation is broken; install mailforge again")

    names = hosts if hosts is not None else inventory.names
    settings, cfg = ansible_settings(inventory.directory)
    check_connections(reaches, names, settings["ANSIBLE_COLLECTIONS_PATH"])
    tally = EventTally(names, progress, output=output)

    with tempfile.TemporaryDirectory(prefix="mailforge-ansible-") as private:
        private_dir = Path(private)
        (private_dir / "inventory").mkdir()
        tls_files = None
        if tls_shipment:
            from .tls.material import assemble

            tls_files = assemble(tls_shipment, private_dir / "tls", names)
        # One inventory file with every host's merged connection (hosts.yml beside the topology
        # included, by hosts.reach_all): Ansible reaches exactly the hosts the other commands reach.
        (private_dir / "inventory" / "mailforge.json").write_text(json.dumps(ansible_inventory(inventory, render_dir, manifest, reaches, names, tls_files)))
        extravars: dict[str, object] = {"mailforge_relay_batch": batch}
        if rotation is not None and rotation.needed and changing_relays and not check:
            from .rotation import save

            save(rotation, rotation_shells or {}, private_dir / "rotation.json")
            extravars["mailforge_rotation_command"] = shlex.join([sys.executable, "-m", "mailforge.cli", "rotation-step", str(private_dir / "rotation.json")])
            extravars["mailforge_rotation_relays"] = changing_relays
        cmdline = []
        if check:
            cmdline.append("--check")
        if diff:
            cmdline.append("--diff")
        if verbosity:
            cmdline.append("-" + "v" * min(verbosity, 6))
        # ansible-runner looks ansible-playbook up on PATH: prefer the one installed beside mailforge.
        scripts = str(Path(sys.executable).parent)
        if scripts not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")
        runner = ansible_runner.run(
            private_data_dir=str(private_dir),
            playbook=str(SITE_PLAYBOOK),
            inventory=str(private_dir / "inventory"),
            cmdline=" ".join(cmdline) or None,
            extravars=extravars,
            envvars={
                **settings,
                # ansible-runner sets ANSIBLE_HOST_KEY_CHECKING=False unless told otherwise: a host key is always checked.
                "ANSIBLE_HOST_KEY_CHECKING": "True",
                "ANSIBLE_NOCOLOR": "True",
            },
            event_handler=tally,
            quiet=True,
        )
        text = runner.stdout.read() if runner.stdout else ""
        if runner.rc != 0 and not any(tally.seen.values()):
            _, where = _keep_log(text, command, cmdline, cfg)
            raise DeployError(f"ansible-playbook failed before reaching any host (status {runner.status}):\n{text[-2000:].strip()}\n{where}")
        result = DeployResult(tally.results(runner.stats or {}, limited=hosts is not None), runner.status, runner.rc)
        if result.failed:
            result.log, result.log_note = _keep_log(text, command, cmdline, cfg)
        return result


def _keep_log(text: str, command: str, cmdline: list[str], cfg: Path | None) -> tuple[Path | None, str]:
    """Keep a failed run's whole log: (its path, a sentence saying where, or why it could not be kept)."""
    from . import runlog

    header = (
        f"# mailforge {command}: ansible-playbook {' '.join([*cmdline, str(SITE_PLAYBOOK)])}\n"
        f"# ansible.cfg: {cfg or 'none (Ansible defaults)'}\n"
        f"# at {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}\n\n"
    )
    try:
        path = runlog.keep(header + text, command)
    except OSError as exc:
        return None, f"the Ansible log could not be kept in {runlog.runs_directory()}: {exc}"
    return path, f"the whole Ansible log: {path}"


def results_of(result: DeployResult, cluster: str, warnings: list | None = None) -> Run:
    """The run in the result shape every command shares: one result per host (its play recap);
    an unreachable host makes it an error (exit 2), a failed task a problem (exit 1)."""
    results = []
    for host, r in result.hosts.items():
        status = "unreachable" if r.unreachable else "failed" if r.failed else "changed" if r.changed else "ok"
        results.append(Result(host, "deploy", status, not (r.failed or r.unreachable), bool(r.changed), "; ".join(r.messages), asdict(r)))
    totals = {key: sum(getattr(r, key) for r in result.hosts.values()) for key in ("ok", "changed", "failed", "unreachable")}
    run = Run(
        "deploy",
        cluster,
        results,
        warnings=list(warnings or []),
        hosts=list(result.hosts),
        summary={"ansible_status": result.status, "rc": result.rc, "totals": totals, **({"log": str(result.log)} if result.log else {})},
    )
    if any(r.unreachable for r in result.hosts.values()):
        run.error = "unreachable: " + ", ".join(h for h, r in result.hosts.items() if r.unreachable)
    elif result.failed and not run.failed:
        run.results.append(Result("all", "deploy", "failed", False, detail=f"ansible-playbook ended with status {result.status} (rc {result.rc})"))
    return run
