"""What a rendered file is, and the shared Jinja environment the templates use."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache

# The action a change to a file needs on its host, in the words of the manifest.
POSTMAP = "postmap"
POSTFIX_RELOAD = "postfix reload"
IPTABLES_RESTORE = "iptables-restore"
IP6TABLES_RESTORE = "ip6tables-restore"
HAPROXY_RELOAD = "haproxy reload"
EXPORTER_RESTART = "exporter restart"  # a Prometheus exporter's settings or init script: restart that exporter

# The database file `postmap` makes beside an indexed table, by table type. Types not named here
# (cidr, regexp, texthash, ...) are read from the source file itself: no database.
DATABASE_SUFFIX = {"hash": ".db", "btree": ".db", "lmdb": ".lmdb", "cdb": ".cdb"}


def database_suffix(table_type: str | None) -> str:
    """What postmap appends to a table's path for its database ("" for a type it does not compile),
    written once so that maps, drift and verify agree on which file proves a map was compiled."""
    return DATABASE_SUFFIX.get(table_type or "", "")


def database_path(path: str, action: str, table_type: str | None) -> str | None:
    """The database that must be current for the file at `path`, or None when the file is not
    compiled (its action is not postmap, or its type has no database)."""
    suffix = database_suffix(table_type) if action == POSTMAP else ""
    return path + suffix if suffix else None


def entry_database_path(path: str, entry: dict) -> str | None:
    """`database_path` for a manifest entry (manifest.json's per-file dict)."""
    return database_path(path, entry["action"], entry.get("table_type"))


class Pieces:
    """Text made piece by piece each time it is read, so a million-line map never sits in memory whole."""

    def __init__(self, produce: Callable[[], Iterable[str]]):
        self._produce = produce

    def __iter__(self) -> Iterator[str]:
        return iter(self._produce())


@dataclass(frozen=True)
class RenderedFile:
    """One file for one host: its content and how it is installed and applied.

    `content` is the text, or `Pieces` of it: the recipients map is written piece
    by piece as it is made instead of being joined into one big string first.
    """

    content: str | Pieces
    action: str
    mode: str = "0644"
    owner: str = "root"
    group: str = "root"
    config_directory: str | None = None  # the Postfix instance a postfix file belongs to
    table_type: str | None = None  # for a Postfix lookup table: hash, lmdb, cidr, regexp (how it is compiled and read)

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(self.content)

    def pieces(self) -> Iterable[str]:
        return (self.content,) if isinstance(self.content, str) else self.content

    def database_path(self, path: str) -> str | None:
        """The database postmap makes for this file installed at `path`, or None if it is not compiled."""
        return database_path(path, self.action, self.table_type)

    def manifest_entry(self, sha256: str) -> dict:
        entry = {"sha256": sha256, "mode": self.mode, "owner": self.owner, "group": self.group, "action": self.action}
        if self.config_directory:
            entry["config_directory"] = self.config_directory
        if self.table_type:
            entry["table_type"] = self.table_type
        return entry


Tree = dict[str, dict[str, RenderedFile]]


def header(cluster: str) -> str:
    return (
        f"# Managed by mailforge for cluster '{cluster}'. Do not edit: changes are overwritten.\n"
        "# Change the inventory and run `mailforge render` / `mailforge deploy` instead.\n"
    )


@lru_cache(maxsize=1)
def environment():
    """One Jinja environment: strict about undefined names, templates mirror destination paths."""
    import jinja2  # imported here: map-only renders (the 1M-recipient path) need no templates

    return jinja2.Environment(
        loader=jinja2.PackageLoader("mailforge", "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def template(path: str, **context) -> str:
    return environment().get_template(path.lstrip("/") + ".j2").render(**context)
