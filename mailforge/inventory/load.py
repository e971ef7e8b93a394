"""Loading an inventory in two layers: the topology alone (topology.yml, no other file read), and the
topology with its recipient sources read (the files it names, a CSV export, an LDAP directory).

Commands that never look at recipients (`dns zone`, `lab down`, `lab status`) load the first, so they
work while the directory is down. Either way every problem is found at once and raised together in
an `InventoryError`, in reading order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import cast

from pydantic import ValidationError

from ..errors import InventoryError, Problem
from . import checks
from .model import Recipients, Topology
from .partial import partial
from .positions import Located, load_yaml
from .problems import from_pydantic
from .recipients import RecipientSet, load_recipients
from .roles import Host, hosts_of

TOPOLOGY_FILE = "topology.yml"


@dataclass
class Inventory:
    """A validated topology, with its recipients read unless it was loaded with `load_topology`."""

    directory: Path
    topology: Topology
    recipients_or_none: RecipientSet | None = None
    warnings: list[Problem] = field(default_factory=list)
    recipients_read: bool = True

    @property
    def recipients(self) -> RecipientSet | None:
        """The valid recipients (None: the topology lists none, so any local part is accepted)."""
        if not self.recipients_read:
            raise RuntimeError("the recipient sources were not read: load the inventory with load_inventory, not load_topology")
        return self.recipients_or_none

    @cached_property
    def hosts(self) -> list[Host]:
        return hosts_of(self.topology)

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.hosts]

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)


def _reading_order(problem: Problem) -> tuple:
    """topology.yml first, then the files it names; top to bottom within each."""
    return (problem.file.name != TOPOLOGY_FILE, str(problem.file), problem.line or 0, problem.column or 0)


def resolve_topology_file(path: Path) -> Path:
    """Accept an inventory directory or the path of its topology.yml."""
    path = Path(path)
    return path / TOPOLOGY_FILE if path.is_dir() else path


def _read_topology(file: Path) -> tuple[Located, Topology, list[Problem], list[Problem]]:
    """(source, topology or its partial model, problems, warnings); raises when not even YAML."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InventoryError(
            [Problem(file, None, None, "", "no such file", f"an inventory directory holding {TOPOLOGY_FILE}, or the path of that file")]
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InventoryError([Problem(file, None, None, "", f"cannot be read: {exc}", "a readable UTF-8 YAML file")]) from None
    source, problems = load_yaml(file, text)
    if source is None or source.data is None:
        raise InventoryError(problems)
    if not isinstance(source.data, dict):
        raise InventoryError(problems + [source.problem((), "the top level is not a mapping", "keys such as cluster, domains, relays, cores")])
    try:
        topology = Topology.model_validate(source.data)
    except ValidationError as exc:
        for error in exc.errors():
            loc = tuple(error["loc"])
            if not any(loc[: len(path)] == path for path in source.unreadable):
                problems.append(from_pydantic(source, error))
        topology = partial(Topology, source.data)  # type: ignore[assignment]  # to find the problems beyond the structural ones
    semantic, warnings = checks.run(topology, source)
    problems.extend(semantic)
    if source.data.get("recipients") is None:
        warnings.append(
            source.problem(
                (),
                "no recipient list: the relays would accept any local part of the hosted domains and bounce later (backscatter)",
                "recipients: with local_parts_file, addresses_file, addresses, csv or ldap",
            )
        )
    return source, topology, problems, warnings


def _read_recipients(file: Path, source: Located, topology: Topology, problems: list[Problem]) -> tuple[RecipientSet | None, list[Problem]]:
    # _read_topology made sure the data is a mapping
    if cast(dict, source.data).get("recipients") is None or not isinstance(getattr(topology, "recipients", None), Recipients):
        return None, []
    domains = getattr(topology, "domains", [])
    # A CSV or LDAP source whose own settings are wrong is not read: its problems are already reported.
    broken = {name for name in ("csv", "ldap") for p in problems if p.key == f"recipients.{name}" or p.key.startswith(f"recipients.{name}.")}
    assert topology.recipients is not None
    return load_recipients(topology.recipients, [d for d in domains if d], file.parent, source, check_domains=all(domains) and bool(domains), skip=broken)


def load_topology(path: Path) -> Inventory:
    """The inventory at `path` without reading its recipient sources (no file but topology.yml, no LDAP)."""
    file = resolve_topology_file(path)
    _, topology, problems, warnings = _read_topology(file)
    if problems:
        raise InventoryError(sorted(problems, key=_reading_order), warnings)
    return Inventory(file.parent, topology, None, warnings, recipients_read=False)


def load_inventory(path: Path) -> Inventory:
    """Read, validate and return the inventory at `path` with its recipients, or raise InventoryError with every problem."""
    file = resolve_topology_file(path)
    source, topology, problems, warnings = _read_topology(file)
    recipients, recipient_problems = _read_recipients(file, source, topology, problems)
    problems.extend(recipient_problems)
    if problems:
        raise InventoryError(sorted(problems, key=_reading_order), warnings)
    return Inventory(file.parent, topology, recipients, warnings)
