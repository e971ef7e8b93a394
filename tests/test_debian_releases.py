"""Each host's Debian release: the Postfix parameters policy.main_cf may set on it, and the lab image
its container starts from. A Postfix 3.10 parameter is fine on trixie relays and refused, located,
for a relay still on bookworm (Postfix 3.7); tests/fixtures/invalid/main_cf_parameter_newer_than_a_relay
holds that message word for word."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import MAILFORGE, REPO

from mailforge.inventory import load_inventory
from mailforge.inventory.postfix_parameters import PARAMETERS_BY_RELEASE, POSTFIX_PARAMETERS
from mailforge.inventory.releases import DEFAULT_RELEASE, RELEASES

DATA = REPO / "mailforge" / "data"
NEWER = "smtpd_hide_client_session"  # came with Postfix 3.10

TOPOLOGY = """\
cluster: t
{default}domains: [example.com]
recipients:
  addresses: [alice@example.com]
relays:
  - name: relay1
    fqdn: relay1.example.com
    address: 10.0.0.21
  - name: relay2
    fqdn: relay2.example.com
    address: 10.0.0.22
{relay2}cores:
  - name: core1
    fqdn: core1.example.com
    address: 10.0.0.30
    debian_release: bookworm
firewall:
  admin_networks: [10.0.0.0/24]
policy:
  main_cf:
    {parameter}: yes
"""


def inventory(tmp_path: Path, default: str | None = None, relay2: str | None = None, parameter: str = NEWER) -> Path:
    text = TOPOLOGY.format(
        default=f"debian_release: {default}\n" if default else "",
        relay2=f"    debian_release: {relay2}\n" if relay2 else "",
        parameter=parameter,
    )
    (tmp_path / "topology.yml").write_text(text, encoding="utf-8")
    return tmp_path


def mailforge(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(MAILFORGE), *map(str, args)], capture_output=True, text=True, timeout=120)


def test_a_postfix_3_10_parameter_is_accepted_on_trixie_relays_and_rendered(tmp_path):
    """Trixie is the default; the core's bookworm does not matter: main_cf is the relays'."""
    result = mailforge("validate", inventory(tmp_path))
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    assert mailforge("render", tmp_path, "-o", out).returncode == 0
    for relay in ("relay1", "relay2"):
        assert f"\n{NEWER} = yes\n" in (out / relay / "etc/postfix/main.cf").read_text()


@pytest.mark.parametrize(
    ("default", "relay2", "refused_for"),
    [(None, "bookworm", "relay relay2 runs"), ("bookworm", None, "relays relay1, relay2 run"), ("bookworm", "trixie", "relay relay1 runs")],
)
def test_a_postfix_3_10_parameter_is_refused_for_bookworm_relays(tmp_path, default, relay2, refused_for):
    result = mailforge("validate", inventory(tmp_path, default, relay2))
    assert result.returncode == 2, result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    line_number = 21 + bool(default) + bool(relay2)  # the parameter's line in TOPOLOGY
    assert line.startswith(f"error: {tmp_path / 'topology.yml'}:{line_number}:5: policy.main_cf.{NEWER}: "), line
    assert f"{refused_for} Postfix 3.7 (debian_release: bookworm, Debian 12), which does not know it" in line
    assert "upgraded to trixie (Debian 13)" in line
    assert "Traceback" not in result.stderr


def test_a_parameter_both_know_is_accepted_everywhere(tmp_path):
    assert mailforge("validate", inventory(tmp_path, "bookworm", parameter="smtpd_helo_required")).returncode == 0


def test_hosts_take_the_topology_release_unless_they_name_their_own(tmp_path):
    hosts = {h.name: h.debian_release.codename for h in load_inventory(inventory(tmp_path, relay2="bookworm", parameter="smtpd_helo_required")).hosts}
    assert hosts == {"relay1": DEFAULT_RELEASE, "relay2": "bookworm", "core1": "bookworm"}
    assert DEFAULT_RELEASE == "trixie"


def test_each_list_is_the_postfix_of_its_release():
    """The shipped lists say which Postfix they came from, and it is the one RELEASES names."""
    for codename, release in RELEASES.items():
        header = (DATA / f"postfix_parameters-{codename}.txt").read_text().splitlines()[0]
        assert header.startswith(f"# postconf -d of Postfix {release.postfix}.") and f"(Debian {codename}," in header, header
    bookworm, trixie = PARAMETERS_BY_RELEASE["bookworm"], PARAMETERS_BY_RELEASE["trixie"]
    assert NEWER in trixie and NEWER not in bookworm
    assert len(bookworm) > 900 and bookworm < trixie  # 3.10 removed nothing 3.7 had, and added some
    assert POSTFIX_PARAMETERS == trixie | bookworm


def test_the_bookworm_list_is_what_postfix_3_7_knows(tmp_path):
    """Judged by this machine's own postconf when it is Debian bookworm's Postfix 3.7."""
    version = subprocess.run(["postconf", "-dh", "mail_version"], capture_output=True, text=True).stdout.strip()
    if not version.startswith("3.7."):
        pytest.skip(f"this machine's Postfix is {version or 'missing'}, not 3.7")
    # Debian's sample master.cf without its pipe(8) services, as scripts/postfix-parameters does.
    (tmp_path / "main.cf").write_text("")
    (tmp_path / "master.cf").write_text(Path("/usr/share/postfix/master.cf.dist").read_text())
    services = subprocess.run(["postconf", "-c", str(tmp_path), "-M"], capture_output=True, text=True, check=True).stdout.splitlines()
    for service in [f"{f[0]}/{f[1]}" for f in map(str.split, services) if f[7] == "pipe"]:
        subprocess.run(["postconf", "-c", str(tmp_path), "-MX", service], check=True)
    result = subprocess.run(["postconf", "-c", str(tmp_path), "-d"], capture_output=True, text=True, check=True)
    known = {line.split(" =", 1)[0] for line in result.stdout.splitlines()}
    assert known == PARAMETERS_BY_RELEASE["bookworm"]


def test_the_lab_starts_each_host_from_its_release_image():
    """The lab's own containers (DNS, client, spammer, user) run the default release."""
    from mailforge import lab

    plan = lab.plan(load_inventory(REPO / "molecule" / "cluster" / "inventory"))
    assert {c.host: c.image for c in plan.containers} == {
        "lb": "mailforge-lab/bookworm:latest",
        "relay1": "mailforge-lab/trixie:latest",
        "relay2": "mailforge-lab/bookworm:latest",
        "core": "mailforge-lab/bookworm:latest",
        "dns": "mailforge-lab/trixie:latest",
        "client": "mailforge-lab/trixie:latest",
        "spammer": "mailforge-lab/trixie:latest",
        "user": "mailforge-lab/trixie:latest",
    }


def test_the_schema_offers_the_releases_to_editors():
    schema = json.loads(mailforge("schema").stdout)
    assert schema["properties"]["debian_release"]["enum"] == list(RELEASES)
    assert schema["properties"]["debian_release"]["default"] == "trixie"
    for host in ("LoadBalancer", "Relay", "Core"):
        assert {"enum": list(RELEASES), "type": "string"} in schema["$defs"][host]["properties"]["debian_release"]["anyOf"], host
