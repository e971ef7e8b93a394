"""The recipient sources under `recipients:`: CSV exports and LDAP directories, alone and combined.

Real parts only: inventories written to tmp and read by `load_inventory` and by
the installed `mailforge` script, and for LDAP a real OpenLDAP slapd (Debian's
package, installed by scripts/setup) started on a free port of 127.0.0.1 with a
throwaway configuration and database.  Its size limit is lower than the number
of entries, so a search only gets every address with paged results.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mailforge.errors import InventoryError
from mailforge.inventory import load_inventory

MAILFORGE = Path(sys.executable).parent / "mailforge"
ENV = {k: v for k, v in os.environ.items() if k not in ("MAILFORGE_DEBUG", "FORCE_COLOR")}
ENV.update(NO_COLOR="1", COLUMNS="500", TERM="dumb")

HOSTS = """\
relays:
  - name: relay1
    fqdn: relay1.example.com
    address: 10.0.0.21
cores:
  - name: core1
    fqdn: core1.example.com
    address: 10.0.0.30
firewall:
  admin_networks: [10.0.0.0/24]
"""


def run(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(MAILFORGE), *map(str, args)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        env={**ENV, **(env or {})},
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def inventory(
    tmp_path: Path, recipients: str, files: dict[str, str | bytes] | None = None, domains: str = "[example.com, example.org, bücher.example]"
) -> Path:
    """An inventory directory: the given `recipients:` block (YAML, indented by 2) and files."""
    directory = tmp_path / "inventory"
    directory.mkdir(exist_ok=True)
    text = f"cluster: t\ndomains: {domains}\nrecipients:\n{textwrap.indent(textwrap.dedent(recipients), '  ')}" + HOSTS
    (directory / "topology.yml").write_text(text, encoding="utf-8")
    for name, content in (files or {}).items():
        path = directory / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return directory


def addresses(directory: Path) -> set[str]:
    """Every recipient the inventory yields, as local@domain."""
    loaded = load_inventory(directory)
    return {f"{local}@{domain}" for domain in loaded.topology.domains for local in loaded.recipients.local_parts_at(domain)}


def problems(directory: Path) -> list[str]:
    with pytest.raises(InventoryError) as caught:
        load_inventory(directory)
    return [str(p) for p in caught.value.problems]


def refused(directory: Path, env: dict | None = None) -> str:
    """stderr of a `mailforge validate` that must exit 2 with problems and no traceback."""
    result = run("validate", directory, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr and "internal error" not in result.stderr, result.stderr
    assert "nothing was written" in result.stderr
    return result.stderr


# --- CSV --------------------------------------------------------------------------


def test_csv_good(tmp_path):
    directory = inventory(
        tmp_path,
        "csv: {file: export.csv, column: mail}\n",
        {
            "export.csv": "name,mail,department\nAlice,alice@example.com,Sales\nBob,bob@example.org,IT\n,,\nNo Mailbox,,IT\n",
        },
    )
    assert addresses(directory) == {"alice@example.com", "bob@example.org"}
    result = run("validate", directory)
    assert result.returncode == 0, result.stderr
    assert "2 recipients" in result.stdout, result.stdout


def test_csv_bom_crlf_quotes_and_delimiter(tmp_path):
    text = (
        '\ufeff"Name";"E-Mail";"Note"\r\n'
        '"Smith; Alice";"alice@example.com";"says ""hi"""\r\n'
        '"two\r\nlines";" carol@Example.COM ";x\r\n'
        "Dave;dave@example.org;\r\n"
    )
    directory = inventory(tmp_path, "csv: {file: export.csv, column: E-Mail, delimiter: ';'}\n", {"export.csv": text.encode("utf-8")})
    assert addresses(directory) == {"alice@example.com", "carol@example.com", "dave@example.org"}


def test_csv_tab_delimiter_and_header_case(tmp_path):
    directory = inventory(
        tmp_path,
        'csv: {file: export.tsv, column: MAIL, delimiter: "\\t"}\n',
        {
            "export.tsv": "uid\tmail\nalice\talice@example.com\n",
        },
    )
    assert addresses(directory) == {"alice@example.com"}


def test_csv_missing_column_names_the_columns_there_are(tmp_path):
    directory = inventory(tmp_path, "csv: {file: export.csv, column: mail}\n", {"export.csv": "name,email,dept\nA,a@example.com,x\n"})
    err = refused(directory)
    assert "export.csv:1:1: recipients.csv.column: no column 'mail' in the header line; its columns are: 'name', 'email', 'dept'" in err, err
    assert "1 problem found" in err


def test_csv_wrong_delimiter_is_suggested(tmp_path):
    directory = inventory(tmp_path, "csv: {file: export.csv, column: mail}\n", {"export.csv": "name;mail\nA;a@example.com\n"})
    err = refused(directory)
    assert "its columns are: 'name;mail'; the header holds ';': is that the delimiter?" in err, err


def test_csv_bad_address_at_line_n(tmp_path):
    directory = inventory(
        tmp_path,
        "csv: {file: export.csv, column: mail}\n",
        {
            "export.csv": 'name,mail\nA,a@example.com\n"B, Jr",b @example.com\nC,c@@example.com\nD\n',
        },
    )
    err = refused(directory)
    file = directory / "export.csv"
    assert f"{file}:3:9: recipients.csv: column 'mail': 'b ' contains whitespace, which would split the map line" in err, err
    assert f"{file}:4:3: recipients.csv: column 'mail': 'c@@example.com' is not an address with exactly one '@'" in err, err
    assert f"{file}:5: recipients.csv: the row has 1 field, so no column 'mail' (field 2 of 2)" in err, err
    assert "3 problems found" in err


def test_csv_address_outside_domains(tmp_path):
    directory = inventory(tmp_path, "csv: {file: export.csv, column: mail}\n", {"export.csv": "mail\na@example.com\nb@example.net\n"})
    err = refused(directory)
    assert f"{directory / 'export.csv'}:3:1: recipients.csv: column 'mail': 'b@example.net' is outside the hosted domains" in err, err


def test_csv_broken_quoting_and_encoding(tmp_path):
    directory = inventory(tmp_path, "csv: {file: export.csv, column: mail}\n", {"export.csv": 'mail\n"a@example.com"x\n'})
    assert f"{directory / 'export.csv'}:2: recipients.csv: not valid CSV:" in refused(directory)
    (directory / "export.csv").write_bytes(b"mail\na@example.com\nb\xe9@example.com\n")
    assert f"{directory / 'export.csv'}:3:2: recipients.csv: file is not UTF-8 text (byte 0xe9)" in refused(directory)


def test_csv_file_missing_is_reported_at_its_key(tmp_path):
    directory = inventory(tmp_path, "csv: {file: nowhere.csv, column: mail}\n")
    err = refused(directory)
    assert f"{directory / 'topology.yml'}:4:9: recipients.csv.file: file 'nowhere.csv' not found" in err, err


# --- every source at once ------------------------------------------------------------


def test_all_file_sources_combine_normalised_and_deduplicated(tmp_path):
    directory = inventory(
        tmp_path,
        """\
        local_parts_file: users.txt
        addresses_file: recipients.txt
        addresses: [Info@BÜCHER.example, alice@example.com, zed@example.org]
        csv: {file: export.csv, column: mail}
        """,
        {
            "users.txt": "postmaster\nAlice\n",
            "recipients.txt": "bob@Example.ORG\ninfo@xn--bcher-kva.example\n",
            "export.csv": "mail\nALICE@example.com\nbob@example.org\nInfo@bücher.example.\ncarol@EXAMPLE.com\n",
        },
    )
    loaded = load_inventory(directory)
    domains = list(loaded.topology.domains)
    assert domains == ["example.com", "example.org", "xn--bcher-kva.example"]
    rs = loaded.recipients
    assert rs.local_parts == ("alice", "postmaster")
    assert rs.local_parts_at("example.com") == ("alice", "carol", "postmaster")
    assert rs.local_parts_at("example.org") == ("alice", "bob", "postmaster", "zed")
    assert rs.local_parts_at("xn--bcher-kva.example") == ("alice", "info", "postmaster")
    assert rs.count(domains) == 10

    out = tmp_path / "out"
    result = run("render", directory, "-o", out)
    assert result.returncode == 0, result.stderr
    lines = [line for line in (out / "relay1/etc/postfix/relay_recipients").read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    assert len(lines) == len(set(lines)) == 10
    assert "info@xn--bcher-kva.example OK" in lines and "carol@example.com OK" in lines


def test_no_source_at_all_is_still_refused(tmp_path):
    directory = inventory(tmp_path, "addresses: []\n")
    assert "names no source" in refused(directory)


# --- LDAP: a real slapd -----------------------------------------------------------------

SUFFIX = "dc=example,dc=com"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PW = "root-Secret-7"
READER_DN = f"cn=reader,{SUFFIX}"
READER_PW = "reader-Pa55-word"
PEOPLE = 12
SIZE_LIMIT = 5  # lower than the entries under ou=people: only a paged search gets them all

SCHEMA = """\
attributetype ( 1.3.6.1.4.1.99999.1.1 NAME 'mailAlternateAddress'
  EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.15{256} )
objectclass ( 1.3.6.1.4.1.99999.2.1 NAME 'mailRecipient' SUP top AUXILIARY
  MAY mailAlternateAddress )
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ldif() -> str:
    entries = [
        f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n",
        f"dn: {READER_DN}\nobjectClass: person\nobjectClass: simpleSecurityObject\ncn: reader\nsn: reader\nuserPassword: {READER_PW}\n",
        f"dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n",
        f"dn: ou=outsiders,{SUFFIX}\nobjectClass: organizationalUnit\nou: outsiders\n",
    ]
    for i in range(1, PEOPLE + 1):
        entry = f"dn: uid=user{i:02d},ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nobjectClass: mailRecipient\nuid: user{i:02d}\ncn: User {i}\nsn: {i}\n"
        entry += f"mail: User{i:02d}@Example.COM\n"
        if i % 3 == 0:
            entry += f"mailAlternateAddress: alt{i:02d}@example.org\nmailAlternateAddress: user{i:02d}@example.com\n"
        entries.append(entry)
    # IDN in the directory (UTF-8, base64 in LDIF), no mail at all, and an address outside the domains.
    entries.append(
        f"dn: uid=buecher,ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nobjectClass: mailRecipient\nuid: buecher\ncn: B\nsn: B\n"
        "mailAlternateAddress:: aW5mb0BCw5xDSEVSLmV4YW1wbGU=\n"
    )  # info@BÜCHER.example
    entries.append(f"dn: uid=nomail,ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: nomail\ncn: N\nsn: N\n")
    entries.append(f"dn: uid=eve,ou=outsiders,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: eve\ncn: E\nsn: E\nmail: eve@example.net\nmail: eve@example.com\n")
    return "\n".join(entries)


EXPECTED_LDAP = (
    {f"user{i:02d}@example.com" for i in range(1, PEOPLE + 1)} | {f"alt{i:02d}@example.org" for i in range(3, PEOPLE + 1, 3)} | {"info@xn--bcher-kva.example"}
)


@pytest.fixture(scope="module")
def slapd(tmp_path_factory):
    """A real OpenLDAP slapd on 127.0.0.1:PORT with a throwaway mdb database; stopped at the end."""
    binary = shutil.which("slapd") or ("/usr/sbin/slapd" if Path("/usr/sbin/slapd").exists() else None)
    assert binary and shutil.which("ldapadd"), "slapd and ldap-utils are not installed: run scripts/setup"
    root = tmp_path_factory.mktemp("slapd")
    (root / "data").mkdir()
    (root / "mailforge-test.schema").write_text(SCHEMA, encoding="utf-8")
    (root / "slapd.conf").write_text(
        textwrap.dedent(f"""\
        include /etc/ldap/schema/core.schema
        include /etc/ldap/schema/cosine.schema
        include /etc/ldap/schema/inetorgperson.schema
        include {root}/mailforge-test.schema
        modulepath /usr/lib/ldap
        moduleload back_mdb
        pidfile {root}/slapd.pid
        sizelimit size.soft={SIZE_LIMIT} size.hard={SIZE_LIMIT} size.prtotal=unlimited
        database mdb
        maxsize 10485760
        suffix "{SUFFIX}"
        rootdn "{ROOT_DN}"
        rootpw {ROOT_PW}
        directory {root}/data
        """),
        encoding="utf-8",
    )
    port = free_port()
    uri = f"ldap://127.0.0.1:{port}"
    log = (root / "slapd.log").open("wb")
    process = subprocess.Popen(
        [binary, "-f", str(root / "slapd.conf"), "-h", f"{uri}/", "-d", "0"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            assert process.poll() is None, f"slapd exited: {(root / 'slapd.log').read_text(errors='replace')}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "slapd did not listen within 15 s"
                time.sleep(0.05)
        added = subprocess.run(["ldapadd", "-x", "-H", uri, "-D", ROOT_DN, "-w", ROOT_PW], input=ldif(), capture_output=True, text=True, timeout=30)
        assert added.returncode == 0, added.stderr
        yield uri
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def ldap_block(uri: str, **settings) -> str:
    values = {
        "uri": uri,
        "bind_dn": READER_DN,
        "password_env": "MF_TEST_LDAP_PW",
        "base": f"ou=people,{SUFFIX}",
        "filter": "(objectClass=inetOrgPerson)",
        "attributes": "[mail, mailAlternateAddress]",
        "page_size": 4,
    }
    values.update(settings)
    lines = "".join(f"  {key}: {value}\n" for key, value in values.items() if value is not None)
    return "ldap:\n" + lines


@pytest.fixture
def reader_password(monkeypatch):
    monkeypatch.setenv("MF_TEST_LDAP_PW", READER_PW)
    return {"MF_TEST_LDAP_PW": READER_PW}


@pytest.mark.tools
def test_the_directory_needs_paging(slapd):
    """Proof that the fixture is a real test of paging: a plain search hits the size limit."""
    import ldap3

    connection = ldap3.Connection(ldap3.Server(slapd, get_info=ldap3.NONE), READER_DN, READER_PW, auto_bind=True)
    try:
        connection.search(f"ou=people,{SUFFIX}", "(objectClass=inetOrgPerson)", attributes=["mail"])
        assert connection.result["description"] == "sizeLimitExceeded", connection.result
        assert len(connection.entries) == SIZE_LIMIT < PEOPLE + 2
        found = connection.extend.standard.paged_search(
            f"ou=people,{SUFFIX}", "(objectClass=inetOrgPerson)", attributes=["mail"], paged_size=SIZE_LIMIT - 1, generator=False
        )
        assert len(found) == PEOPLE + 2
    finally:
        connection.unbind()


@pytest.mark.tools
@pytest.mark.parametrize("page_size", [4, 500])
def test_ldap_every_address_from_two_attributes(slapd, tmp_path, reader_password, page_size):
    directory = inventory(tmp_path, ldap_block(slapd, page_size=page_size))
    assert addresses(directory) == EXPECTED_LDAP

    out = tmp_path / "out"
    result = run("render", directory, "-o", out, env=reader_password)
    assert result.returncode == 0, result.stderr
    relay_recipients = (out / "relay1/etc/postfix/relay_recipients").read_text(encoding="utf-8")
    assert "alt12@example.org OK\n" in relay_recipients and "info@xn--bcher-kva.example OK\n" in relay_recipients
    for path in out.rglob("*"):
        if path.is_file():
            assert READER_PW.encode() not in path.read_bytes(), f"the password is in {path}"
    assert READER_PW not in result.stdout + result.stderr


@pytest.mark.tools
def test_ldap_password_from_file(slapd, tmp_path):
    directory = inventory(tmp_path, ldap_block(slapd, password_env=None, password_file="ldap.secret"), {"ldap.secret": READER_PW + "\n"})
    assert addresses(directory) == EXPECTED_LDAP
    result = run("validate", directory)
    assert result.returncode == 0, result.stderr
    assert f"{len(EXPECTED_LDAP)} recipients" in result.stdout


@pytest.mark.tools
def test_ldap_combines_with_the_other_sources(slapd, tmp_path, reader_password):
    directory = inventory(
        tmp_path,
        ldap_block(slapd)
        + textwrap.dedent("""\
        local_parts_file: users.txt
        addresses: [USER01@example.com, new@example.org]
        csv: {file: export.csv, column: mail}
        """),
        {"users.txt": "user02\npostmaster\n", "export.csv": "mail\nuser03@EXAMPLE.com\nalt03@example.org\ncsv@example.com\n"},
    )
    everyone = (
        EXPECTED_LDAP
        | {"new@example.org", "csv@example.com"}
        | {f"{local}@{domain}" for local in ("user02", "postmaster") for domain in ("example.com", "example.org", "xn--bcher-kva.example")}
    )
    loaded = load_inventory(directory)
    assert loaded.recipients.local_parts == ("postmaster", "user02")
    assert addresses(directory) == everyone
    assert loaded.recipients.count(list(loaded.topology.domains)) == len(everyone)


@pytest.mark.tools
def test_ldap_wrong_password(slapd, tmp_path):
    wrong = "Wrong-Passw0rd-xyz"
    directory = inventory(tmp_path, ldap_block(slapd))
    err = refused(directory, env={"MF_TEST_LDAP_PW": wrong})
    assert f"LDAP {slapd}: bind as '{READER_DN}' failed: invalid credentials" in err, err
    assert "recipients.ldap.bind_dn" in err
    assert wrong not in err and READER_PW not in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1, err


@pytest.mark.tools
def test_ldap_unreachable_port(tmp_path, reader_password):
    uri = f"ldap://127.0.0.1:{free_port()}"
    directory = inventory(tmp_path, ldap_block(uri, timeout=3))
    started = time.monotonic()
    err = refused(directory, env=reader_password)
    assert time.monotonic() - started < 60
    assert f"recipients.ldap.uri: LDAP {uri}: cannot connect: connection refused" in err, err
    assert READER_PW not in err


@pytest.mark.tools
def test_ldap_address_outside_the_domains_names_the_entry(slapd, tmp_path, reader_password):
    directory = inventory(tmp_path, ldap_block(slapd, base=f"ou=outsiders,{SUFFIX}"))
    err = refused(directory, env=reader_password)
    assert (
        f"recipients.ldap.attributes[0]: LDAP {slapd}: entry 'uid=eve,ou=outsiders,{SUFFIX}', attribute mail: 'eve@example.net' is outside the hosted domains"
    ) in err, err
    assert "1 problem found" in err


@pytest.mark.tools
def test_ldap_bad_base_and_anonymous_search(slapd, tmp_path, reader_password):
    directory = inventory(tmp_path, ldap_block(slapd, base=f"ou=nobody,{SUFFIX}"))
    err = refused(directory, env=reader_password)
    assert f"recipients.ldap.base: LDAP {slapd}: search base 'ou=nobody,{SUFFIX}' does not exist: no such object" in err, err
    # Anonymous: slapd's default access lets anyone read, so no bind_dn and no password works too.
    directory = inventory(tmp_path, ldap_block(slapd, bind_dn=None, password_env=None))
    assert addresses(directory) == EXPECTED_LDAP


def test_ldap_password_in_the_inventory_is_refused(tmp_path):
    directory = inventory(tmp_path, ldap_block("ldap://127.0.0.1:9", password_env=None, password="Inline-S3cret"))
    err = refused(directory)
    assert "recipients.ldap.password: a password may not be written in the inventory" in err, err
    assert "password_env" in err and "password_file" in err
    assert "Inline-S3cret" not in err
    assert "1 problem found" in err  # the directory is not asked while its settings are wrong


def test_ldap_settings_are_checked_before_connecting(tmp_path):
    directory = inventory(tmp_path, ldap_block("http://ldap.example.com", password_env="not a name", page_size=0, attributes="[mail, 'bad attr']"))
    err = refused(directory)
    assert "recipients.ldap.uri: 'http://ldap.example.com' is not an ldap:// or ldaps:// URI" in err, err
    assert "recipients.ldap.password_env: is not the name of an environment variable" in err
    assert "not a name" not in err
    assert "recipients.ldap.page_size:" in err
    assert "recipients.ldap.attributes[1]: 'bad attr' is not an LDAP attribute name" in err
    assert "4 problems found" in err


def test_ldap_password_env_unset(tmp_path):
    directory = inventory(tmp_path, ldap_block("ldap://127.0.0.1:9", password_env="MF_TEST_SURELY_UNSET"))
    err = refused(directory, env={"MF_TEST_SURELY_UNSET": ""})
    assert "recipients.ldap.password_env: environment variable 'MF_TEST_SURELY_UNSET' is not set or is empty" in err, err
