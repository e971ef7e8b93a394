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

    def manifest_entry(self, sha256: str) -> dict:
        entry = {"sha256": sha256, "mode": self.mode, "owner": self.owner, "group": self.group, "action": self.action}
        if self.config_directory:
            entry["config_directory"] = self.config_directory
        if self.table_type:
            entry["table_type"] = self.table_type
        return entry


Tree = dict[str, dict[str, RenderedFile]]


def header(cluster: str, comment: str = "#") -> str:
    return (
        f"{comment} Managed by mailforge for cluster '{cluster}'. Do not edit: changes are overwritten.\n"
        f"{comment} Change the inventory and run `mailforge render` / `mailforge deploy` instead.\n"
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
