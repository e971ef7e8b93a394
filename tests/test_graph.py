"""`mailforge graph`: the picture of a cluster, as DOT text (pinned per inventory) and drawn by Graphviz's `dot`.

Regenerate the pinned DOT on purpose with: MAILFORGE_UPDATE_GOLDEN=1 pytest tests/test_graph.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import INVENTORIES, MAILFORGE

from mailforge import diagram
from mailforge.inventory import load_topology

GOLDEN = Path(__file__).parent / "golden-graph"


def mailforge(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(MAILFORGE), *args], capture_output=True, text=True, timeout=120, env=env)


def topology(name: str):
    return load_topology(INVENTORIES[name]).topology


@pytest.mark.parametrize("name", sorted(INVENTORIES))
def test_dot_matches_golden(name):
    text = diagram.dot(topology(name))
    golden = GOLDEN / f"{name}.dot"
    if os.environ.get("MAILFORGE_UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text, encoding="utf-8")
    assert golden.exists(), f"no golden DOT for {name}; run with MAILFORGE_UPDATE_GOLDEN=1"
    assert text == golden.read_text(encoding="utf-8")


def test_golden_covers_every_inventory():
    assert sorted(p.stem for p in GOLDEN.glob("*.dot")) == sorted(INVENTORIES)


def test_the_example_picture_says_what_the_topology_says():
    text = diagram.dot(topology("example"))
    edges = dict(re.findall(r'^  ("[^"]+" -> "[^"]+") \[label="([^"]*)"', text, re.M))
    assert edges['"the Internet (senders)" -> "lb"'] == "SMTP :25"
    assert edges['"lb" -> "relay1"'] == edges['"lb" -> "relay2"'] == ":10024, PROXY v2"
    assert edges['"relay1" -> "core"'] == "SMTP :25, inbound mail"
    assert edges['"core user network 0" -> "core"'] == "SMTP :25, outbound mail"  # the user network 10.232.0.128/26
    assert edges['"core" -> "the Internet (recipients)"'] == "outbound mail"  # the core sends, as SPF says
    # nothing else: the Internet reaches only the balancer, and the core only the relays and the user network
    assert sorted(edges) == sorted(
        [
            '"the Internet (senders)" -> "lb"',
            '"lb" -> "relay1"',
            '"lb" -> "relay2"',
            '"relay1" -> "core"',
            '"relay2" -> "core"',
            '"core user network 0" -> "core"',
            '"core" -> "the Internet (recipients)"',
        ]
    )
    assert "SSH :22 admitted from 10.232.0.0/24" in text and "10.232.0.128/26" in text
    # behind a balancer without fqdn, the picture says the MX has nothing to name
    assert "no fqdn, so no MX can name it" in diagram.dot(topology("lb-relays-core"))


def _accepted(rules: str) -> list[tuple[int, str]]:
    """(port, source) of every TCP port the rendered iptables rules admit, SSH aside."""
    found = []
    for line in rules.splitlines():
        match = re.search(r"(?:-s (\S+) )?-p tcp -m tcp --dport (\d+) .*-j ACCEPT", line)
        if match and "ssh" not in line:
            found.append((int(match.group(2)), match.group(1) or "0.0.0.0/0"))
    return found


@pytest.mark.parametrize("name", sorted(INVENTORIES))
def test_the_firewall_in_the_picture_is_the_rendered_firewall(name, rendered):
    """What a host's box says its firewall admits is exactly what its rendered rules.v4 accepts (IPv4 here)."""
    out = rendered(name)
    for box in diagram.boxes(topology(name)):
        rules = out / box.name / "etc" / "iptables" / "rules.v4"
        if not rules.exists():  # an external balancer: nothing of it is rendered
            assert box.role == "external load balancer" and box.admits == []
            continue
        drawn = []
        for line in box.admits:
            port, sources = re.match(r":(\d+) from (.+) \(", line).groups()
            drawn += [(int(port), "0.0.0.0/0" if sources == "anywhere" else s) for s in sources.split(", ") if ":" not in s]
        assert sorted(drawn) == sorted(_accepted(rules.read_text())), box.name


# --- drawn by Graphviz --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(INVENTORIES))
def test_dot_draws_a_valid_svg_naming_every_host(name, tmp_path):
    assert shutil.which("dot"), "Graphviz is not installed: run scripts/setup"
    svg = tmp_path / f"{name}.svg"
    result = mailforge("graph", str(INVENTORIES[name]), "-o", str(svg))
    assert result.returncode == 0, result.stderr
    assert f"wrote {svg}" in result.stdout
    root = ET.parse(svg).getroot()  # well-formed XML, or this raises
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    texts = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    t = topology(name)
    for host in [*t.load_balancers, *t.relays, *t.cores]:
        assert f"{host.name}:" in texts, f"{host.name} is not in the picture"
    for core in t.cores:
        for net in core.user_networks:
            assert net in texts


def test_png_and_dot_by_the_suffix_and_stdout_by_default(tmp_path):
    png, dot = tmp_path / "c.png", tmp_path / "c.dot"
    assert mailforge("graph", str(INVENTORIES["example"]), "-o", str(png)).returncode == 0
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert mailforge("graph", str(INVENTORIES["example"]), "-o", str(dot)).returncode == 0
    text = diagram.dot(topology("example"))
    assert dot.read_text() == text
    assert mailforge("graph", str(INVENTORIES["example"])).stdout == text


def test_json_envelope(tmp_path):
    svg = tmp_path / "c.svg"
    result = mailforge("graph", str(INVENTORIES["example"]), "-o", str(svg), "--json")
    assert result.returncode == 0, result.stderr
    envelope = json.loads(result.stdout)
    assert (envelope["command"], envelope["cluster"], envelope["status"], envelope["exit_code"]) == ("graph", "example", "ok", 0)
    assert list(envelope["hosts"]) == ["lb", "relay1", "relay2", "core"]
    [core] = envelope["hosts"]["core"]["results"]
    assert core["data"]["admits"][-1] == ":25 from 10.232.0.128/26 (users send outbound mail)"
    assert envelope["summary"]["output"] == str(svg) and envelope["summary"]["format"] == "svg"
    assert envelope["summary"]["dot"] == diagram.dot(topology("example"))


def test_without_dot_exit_2_and_the_old_picture_stays(tmp_path):
    svg = tmp_path / "c.svg"
    svg.write_text("the old picture")
    env = {**os.environ, "PATH": str(MAILFORGE.parent)}  # no Graphviz on PATH
    result = mailforge("graph", str(INVENTORIES["example"]), "-o", str(svg), env=env)
    assert result.returncode == 2
    assert "drawing SVG needs Graphviz's `dot`, which is not installed" in result.stderr and "apt-get install graphviz" in result.stderr
    assert "Traceback" not in result.stderr
    assert svg.read_text() == "the old picture" and [p.name for p in tmp_path.iterdir()] == ["c.svg"]  # no temporary left


def test_bad_input_exits_2(tmp_path):
    result = mailforge("graph", str(INVENTORIES["example"]), "-o", str(tmp_path / "c.jpg"))
    assert result.returncode == 2 and "end it in .svg or .png" in result.stderr and not (tmp_path / "c.jpg").exists()
    result = mailforge("graph", str(INVENTORIES["example"]), "-o", str(tmp_path / "missing" / "c.svg"))
    assert result.returncode == 2 and "the directory" in result.stderr and "does not exist" in result.stderr
    shutil.copy(INVENTORIES["example"] / "users.txt", tmp_path / "users.txt")
    (tmp_path / "topology.yml").write_text((INVENTORIES["example"] / "topology.yml").read_text().replace("backend_port: 10024", "backend_port: 99999"))
    result = mailforge("graph", str(tmp_path), "--json")
    assert result.returncode == 2 and "topology.yml:" in result.stderr and "99999 is not a TCP port" in result.stderr
    assert json.loads(result.stdout)["status"] == "error"


def test_the_committed_picture_is_the_examples_current_one():
    """docs/example-topology.svg (shown in the README) has the nodes and edges the example draws today
    (compared by name, so another Graphviz version's layout does not matter): regenerate it with
    `mailforge graph inventories/example -o docs/example-topology.svg`."""
    svg = ET.parse(Path(__file__).parents[1] / "docs" / "example-topology.svg").getroot()
    ns = "{http://www.w3.org/2000/svg}"
    titles = {g.get("class"): set() for g in svg.iter(f"{ns}g")}
    for g in svg.iter(f"{ns}g"):
        title = g.find(f"{ns}title")
        if g.get("class") in ("node", "edge") and title is not None:
            titles[g.get("class")].add(title.text)
    text = diagram.dot(topology("example"))
    nodes = set(re.findall(r'^\s+"([^"]+)" \[label=', text, re.M))
    edges = {f"{a}->{b}" for a, b in re.findall(r'^  "([^"]+)" -> "([^"]+)"', text, re.M)}
    assert titles["node"] == nodes and titles["edge"] == edges
    labels = " ".join(t.text or "" for t in svg.iter(f"{ns}text"))
    for line in diagram.boxes(topology("example"))[1].admits:  # relay1's firewall, as drawn
        assert line in labels
