"""How each host of the cluster is reached: one value per host, merged in one documented order, from
which come both Ansible's host variables (`deploy`) and the shell transport (`verify`, `maps`, `drift`).

Precedence, lowest first (a later layer overrides only what it sets):

1. the topology's `connection:`, the defaults for every host;
2. the host's own `connection:` in topology.yml;
3. an Ansible inventory beside topology.yml (`ansible_inventory.yml`, `ansible_inventory.yaml` or
   `hosts.yml`): the variables it gives that host, its groups' and `all`'s included, read by Ansible's
   own inventory parser;
4. `--lab`: the host's lab container, which replaces every connection setting: it is reached over SSH
   exactly as a real host is, as the lab's admin user with sudo, with the key pair and known_hosts
   file that `lab up` made for that lab (`lab.reaches`).

A worked example. topology.yml says `connection: {user: admin, become: true}` and, for relay2,
`connection: {port: 2222}`; hosts.yml gives relay2 `ansible_host: 192.0.2.22` and `all` the variable
`ansible_user: deploy`. Then relay2 is reached as `ssh -p 2222 deploy@192.0.2.22` and runs its
commands with sudo; relay1 as `ssh deploy@<its address>`, also with sudo; with `--lab`, both as
`ssh -i <lab key> -o UserKnownHostsFile=<lab known_hosts> mailforge@<container address>`, with sudo.

Host keys are always checked (`StrictHostKeyChecking=yes`, against `known_hosts_file` or ssh's own
file), and `check_access` asks every selected host before a command does anything: an unknown or
changed key, a refused login, a closed port, a name that does not resolve or a user without sudo
stops the command with exit 2, naming the host and what to do.

`--limit` means the same to every command: host names, the groups `balancers`, `relays`, `mxproxies`
and `cores` (and `all`), in Ansible's pattern grammar (`a,b` or `a:b` union, `&g` intersection, `!x`
exclusion, `*` wildcards, `~regex`), resolved here against the inventory's hosts.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import MailforgeError
from .inventory import GROUPS, Host, Inventory
from .remote import HostShell, control_path, docker_argv, ssh_argv

# A standard Ansible inventory beside topology.yml adds or overrides connection settings.
ANSIBLE_INVENTORIES = ("ansible_inventory.yml", "ansible_inventory.yaml", "hosts.yml")
# topology.yml's connection keys and the Ansible variables they are.
ANSIBLE_NAMES = {
    "plugin": "ansible_connection",
    "host": "ansible_host",
    "user": "ansible_user",
    "port": "ansible_port",
    "private_key_file": "ansible_ssh_private_key_file",
    "become": "ansible_become",
}
KNOWN_HOSTS = "known_hosts_file"  # no Ansible variable of its own: it goes into ansible_ssh_common_args
_ALIASES = {"ansible_private_key_file": "private_key_file", "ansible_ssh_host": "host", "ansible_ssh_user": "user", "ansible_ssh_port": "port"}
_MAGIC = {"inventory_hostname", "inventory_hostname_short", "group_names"}


class HostsError(MailforgeError):
    """The hosts to reach could not be worked out: a broken Ansible inventory, a --limit that matches nothing."""


@dataclass(frozen=True)
class Reach:
    """How one host is reached. `settings` holds topology.yml's connection keys (plugin, host, user,
    port, private_key_file, become); `extra` other Ansible variables, passed on to Ansible as they are."""

    name: str
    address: str | None  # the host's address in the topology: where it is reached unless `host` says otherwise
    settings: Mapping[str, object] = field(default_factory=dict)
    extra: Mapping[str, object] = field(default_factory=dict)
    env: Mapping[str, str] | None = None  # the environment the transport runs in (the lab engine's DOCKER_HOST)

    @property
    def plugin(self) -> str:
        """ssh, local or docker: the last part of the Ansible connection plugin's name."""
        return str(self.settings.get("plugin") or "ssh").rsplit(".", 1)[-1]

    @property
    def target(self) -> str:
        return str(self.settings.get("host", self.address))

    @property
    def become(self) -> bool:
        return bool(self.settings.get("become"))

    def ansible_vars(self) -> dict[str, object]:
        hostvars: dict[str, object] = {"ansible_host": self.address}
        hostvars.update({ANSIBLE_NAMES[k]: v for k, v in self.settings.items() if k in ANSIBLE_NAMES})
        hostvars.update(self.extra)
        if self.plugin == "ssh":  # the same host key checking as the shell transport's, whatever ~/.ssh/config says
            known = self.settings.get(KNOWN_HOSTS)
            options = "-o StrictHostKeyChecking=yes" + (f" -o UserKnownHostsFile={shlex.quote(str(known))}" if known else "")
            common = str(hostvars.get("ansible_ssh_common_args") or "")
            hostvars["ansible_ssh_common_args"] = f"{common} {options}".strip()
            # Ansible's master connections and the shell transport's are one and the same, and never
            # shared with a run that uses another key or known_hosts file (see remote.control_path).
            key = self.settings.get("private_key_file")
            hostvars.setdefault("ansible_control_path", control_path(str(key) if key else None, str(known) if known else None).replace("%C", "%%C"))
        return hostvars

    def shell(self, connect_timeout: int = 10) -> HostShell:
        """The shell transport: SSH in batch mode (a key or an agent, never a password prompt), or
        `docker exec` and a local shell where the connection plugin says so."""
        env = dict(self.env) if self.env is not None else None
        if self.plugin == "docker":
            return HostShell(self.name, docker_argv(self.target), env=env, become=self.become)
        if self.plugin == "local":
            return HostShell(self.name, ["env"], env=env, become=self.become)
        s = self.settings
        argv = ssh_argv(self.target, s.get("user"), s.get("port"), s.get("private_key_file"), connect_timeout, s.get(KNOWN_HOSTS))  # type: ignore[arg-type]
        return HostShell(self.name, argv, env=env, remote_command_is_string=True, become=self.become)


def _layer(connection) -> dict[str, object]:
    return connection.model_dump(exclude_none=True) if connection is not None else {}


def ansible_inventory_file(directory: Path) -> Path | None:
    return next((directory / name for name in ANSIBLE_INVENTORIES if (directory / name).is_file()), None)


def _ansible_inventory_vars(file: Path, names: list[str], warn: Callable[[str], None] | None = None) -> dict[str, dict[str, object]]:
    """{host: its variables} from an Ansible inventory file, as Ansible merges them (all < parent
    groups < child groups < the host's own)."""
    import yaml
    from ansible.errors import AnsibleError
    from ansible.inventory.helpers import get_group_vars
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.utils.vars import combine_vars

    try:  # read it as YAML first: a YAML error is named with its line, instead of Ansible's parser warnings
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise HostsError(f"{file}: cannot be read: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(file)
        raise HostsError(f"{where}: not YAML ({getattr(exc, 'problem', None) or exc}); expected an Ansible inventory in YAML") from None
    if data is not None and not isinstance(data, dict):
        raise HostsError(f"{file}: the top level is not a mapping; expected an Ansible inventory in YAML (all: hosts: ...)")
    try:
        manager = InventoryManager(loader=DataLoader(), sources=[str(file)], parse=False)
        manager.parse_source(str(file))
    except AnsibleError as exc:
        raise HostsError(f"{file}: Ansible cannot read it: {exc.message}") from None
    if not manager.hosts and file.stat().st_size:
        # parse_source warns and carries on: an inventory it could not read holds no host at all.
        raise HostsError(f"{file}: Ansible finds no host in it (is it an Ansible inventory in YAML or INI?)")
    found: dict[str, dict[str, object]] = {}
    for name in names:
        host = manager.get_host(name)
        if host is None:
            continue
        merged = combine_vars(get_group_vars(host.get_groups()), host.get_vars())
        found[name] = {k: v for k, v in merged.items() if k not in _MAGIC}
    strangers = sorted(h for h in manager.hosts if h not in names)
    if strangers and warn is not None:  # a misspelt host name would otherwise leave its host reached by the topology alone
        warn(
            f"{file}: {', '.join(strangers)} {'is' if len(strangers) == 1 else 'are'} not a host of the topology "
            f"(hosts: {', '.join(names)}); its settings are not used"
        )
    return found


def _from_ansible(variables: Mapping[str, object]) -> tuple[dict[str, object], dict[str, object]]:
    """Ansible variables split into topology connection keys and the rest."""
    names = {v: k for k, v in ANSIBLE_NAMES.items()} | _ALIASES
    settings, extra = {}, {}
    for key, value in variables.items():
        if key in names:
            settings[names[key]] = value
        else:
            extra[key] = value
    return settings, extra


def reach_all(inventory: Inventory, lab: Mapping[str, Reach] | None = None, warn: Callable[[str], None] | None = None) -> dict[str, Reach]:
    """How every host of the inventory is reached, merged in the order of this module's docstring
    (with `lab`, the lab's containers: the Ansible inventory beside the topology is not read)."""
    t = inventory.topology
    file = ansible_inventory_file(inventory.directory) if lab is None else None
    overrides = _ansible_inventory_vars(file, inventory.names, warn) if file is not None else {}
    reaches = {}
    for host in inventory.hosts:
        if lab is not None:
            reaches[host.name] = lab[host.name]
            continue
        settings = {**_layer(t.connection), **_layer(host.entry.connection)}
        extra: dict[str, object] = {}
        if host.name in overrides:
            more, extra = _from_ansible(overrides[host.name])
            settings.update(more)
        reaches[host.name] = Reach(host.name, host.address, settings, extra)
    return reaches


# --- --limit ---------------------------------------------------------------------------------------


def _groups(hosts: list[Host]) -> dict[str, list[str]]:
    groups = {"all": [h.name for h in hosts]}
    for group in GROUPS:
        groups[group] = [h.name for h in hosts if h.group == group]
    return groups


def _match(term: str, hosts: list[Host], groups: dict[str, list[str]]) -> list[str]:
    names = [h.name for h in hosts]
    if term in groups:
        return groups[term]
    if term in names:
        return [term]
    if term.startswith("~"):
        try:
            pattern = re.compile(term[1:])
        except re.error as exc:
            raise HostsError(f"--limit: {term!r} is not a regular expression ({exc})") from None
        return [n for n in names if pattern.match(n)] + [n for g, members in groups.items() if pattern.match(g) for n in members]
    if any(c in term for c in "*?["):
        return [n for n in names if fnmatch.fnmatchcase(n, term)] + [n for g, members in groups.items() if fnmatch.fnmatchcase(g, term) for n in members]
    return []


def select(inventory: Inventory, limit: str | None) -> list[Host]:
    """The hosts `--limit` names, in the inventory's order (every host without a limit).

    As Ansible does, the plain terms are joined first, then `&` terms intersect and `!` terms remove.
    A term that matches nothing is refused: a typo must not quietly shrink a rollout."""
    hosts = inventory.hosts
    if limit is None or not limit.strip():
        return list(hosts)
    groups = _groups(hosts)
    terms = [t.strip() for t in re.split(r"[,:]", limit) if t.strip()]
    plain = [t for t in terms if t[0] not in "&!"]
    both = [t[1:] for t in terms if t[0] == "&"]
    without = [t[1:] for t in terms if t[0] == "!"]
    chosen: set[str] = set()
    for term in plain or ["all"]:
        found = _match(term, hosts, groups)
        if not found and term not in groups:
            raise HostsError(
                f"--limit: {term!r} matches no host or group of the inventory "
                f"(hosts: {', '.join(h.name for h in hosts)}; groups: {', '.join(g for g in groups if groups[g])})"
            )
        chosen |= set(found)
    for term in both:
        chosen &= set(_match(term, hosts, groups))
    for term in without:
        chosen -= set(_match(term, hosts, groups))
    if not chosen:
        raise HostsError(f"--limit {limit!r} leaves no host")
    return [h for h in hosts if h.name in chosen]


# --- before anything is done: every host answers, as the user that will act there -------------------


@dataclass(frozen=True)
class Access:
    """A host that answered: where it sees this controller's SSH connection come from (None when it is
    not reached over SSH), and the port it took the connection on."""

    name: str
    seen_from: str | None = None
    port: int | None = None


def check_access(reaches: Mapping[str, Reach], names: list[str], workers: int = 32) -> dict[str, Access]:
    """Ask every host in `names`, at once, whether it takes this controller's connection with a host key
    we know and lets the user become root: before any command changes or reads anything. Every host
    that does not is named in one HostUnreachable (exit 2), with what to do about it."""
    from concurrent.futures import ThreadPoolExecutor

    from .remote import HostUnreachable

    def ask(name: str) -> Access | str:
        shell = reaches[name].shell()
        try:
            answer = shell.run('echo "$SSH_CONNECTION"', timeout=60, become=False)
            if shell.become:
                shell.run("true", timeout=60)  # sudo -n: refused sudo raises, with the fix
        except HostUnreachable as exc:
            return str(exc)
        if answer.returncode != 0:
            return f"{name}: a shell there fails: {answer.stderr.decode(errors='replace').strip()[-300:]}"
        fields = answer.stdout.decode(errors="replace").split()
        if len(fields) == 4:  # client address, client port, server address, server port
            return Access(name, fields[0], int(fields[3]))
        return Access(name)

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(names)))) as pool:
        answers = dict(zip(names, pool.map(ask, names), strict=True))
    problems = [a for a in answers.values() if isinstance(a, str)]
    if problems:
        raise HostUnreachable("; ".join(problems))
    return {name: a for name, a in answers.items() if isinstance(a, Access)}
