"""`mailforge.installed` against real files in a temporary directory, through a local shell.

The shell function maps, drift and (through drift) verify send to every host: the sha256 and
stat of a file, whether a map's database is current, a symlink told apart from a file.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import time

from mailforge import installed
from mailforge.remote import HostShell
from mailforge.render.files import POSTFIX_RELOAD, POSTMAP, RenderedFile, database_path, database_suffix, entry_database_path


def ask(*files: tuple[str, str | None]) -> dict[str, installed.Installed]:
    result = HostShell("here", ["env"]).run(installed.script(files))
    assert result.returncode == 0, result.stderr
    return installed.parse(result.stdout.decode())


def test_a_file_its_database_a_symlink_and_an_absent_file(tmp_path):
    table = tmp_path / "relay recipients"  # a space in the path survives the round trip
    table.write_text("a@example.com OK\n")
    table.chmod(0o640)
    database = tmp_path / "relay recipients.db"
    link = tmp_path / "link"
    link.symlink_to(table)
    me = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name

    live = ask((str(table), str(database)), (str(link), None), (str(tmp_path / "absent"), str(tmp_path / "absent.db")))
    found = live[str(table)]
    assert found.sha256 == hashlib.sha256(table.read_bytes()).hexdigest() and not found.symlink
    assert found.stat == f"640 {me[0]} {me[1]}" == installed.expected_stat("0640", *me)
    assert found.database_current is False  # no database yet
    assert live[str(link)].symlink and live[str(link)].sha256 == found.sha256 and live[str(link)].database_current is None
    absent = live[str(tmp_path / "absent")]
    assert absent.sha256 is None and absent.stat == "- - -"

    database.write_text("compiled")
    assert ask((str(table), str(database)))[str(table)].database_current is True
    later = time.time() + 5
    os.utime(table, (later, later))  # the map edited after postmap
    assert ask((str(table), str(database)))[str(table)].database_current is False


def test_mismatches_name_what_differs(tmp_path):
    me = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    entry = {"sha256": "0" * 64, "mode": "0644", "owner": me[0], "group": me[1], "action": POSTMAP, "table_type": "hash"}
    live = installed.Installed("/m", "0" * 64, "644", me[0], me[1], True)
    assert installed.mismatches(live, entry, "/m.db") == []
    live = installed.Installed("/m", "1" * 64, "600", me[0], me[1], False)
    assert installed.mismatches(live, entry, "/m.db") == [
        installed.CONTENT_DIFFERS,
        f"mode/owner/group 600 {me[0]} {me[1]}, rendered 644 {me[0]} {me[1]}",
        installed.DATABASE_STALE,
    ]
    assert installed.DATABASE_STALE not in installed.mismatches(live, entry, None)


def test_the_database_is_named_by_the_table_type():
    assert [database_suffix(t) for t in ("hash", "btree", "lmdb", "cdb", "cidr", "regexp", None)] == [".db", ".db", ".lmdb", ".cdb", "", "", ""]
    assert database_path("/etc/postfix/transport", POSTMAP, "lmdb") == "/etc/postfix/transport.lmdb"
    assert database_path("/etc/postfix/header_checks", POSTFIX_RELOAD, "regexp") is None
    assert RenderedFile("x", POSTMAP, table_type="hash").database_path("/etc/postfix/relay_domains") == "/etc/postfix/relay_domains.db"
    assert entry_database_path("/etc/postfix/relay_domains", {"action": POSTMAP, "table_type": "hash"}) == "/etc/postfix/relay_domains.db"
    assert entry_database_path("/etc/postfix/main.cf", {"action": POSTFIX_RELOAD}) is None
