"""`verify` without containers: host specs, the probe through a shell, and the CLI's exit codes
without pytest (or testinfra) importable. The host rows are tested in test_drift.py, from the
same simulated survey answers drift is tested with."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading

import pytest
from conftest import INVENTORIES, unreachable_example

from mailforge.probes import run_probe
from mailforge.remote import HostShell, ShellSpecError, shell_from_spec
from mailforge.verify import _front_door


def test_host_specs_become_shells():
    shell = shell_from_spec("ssh://admin@10.0.0.5:2222")
    assert shell.argv[:1] == ["ssh"] and shell.argv[-3:] == ["-p", "2222", "admin@10.0.0.5"] and shell.remote_command_is_string
    assert shell_from_spec("ssh://[2001:db8::5]").argv[-1] == "2001:db8::5"
    assert shell_from_spec("ssh://ops@mx.example.com?ssh_identity_file=/k/id").argv[-3:] == ["-i", "/k/id", "ops@mx.example.com"]
    docker = shell_from_spec("docker://mf-example-client", "client", env={"DOCKER_HOST": "unix:///x"})
    assert (docker.name, docker.argv, docker.env) == ("client", ["docker", "exec", "-i", "mf-example-client"], {"DOCKER_HOST": "unix:///x"})


@pytest.mark.parametrize(
    "spec",
    [
        "10.0.0.5",
        "ssh://",
        "ssh://host:99999",
        "ssh://host:port",
        "ssh://u:pw@host",
        "ssh://host/path",
        "ssh://-oProxyCommand=x",
        "ssh://host?sudo=true",
        "docker://",
        "docker://a:b",
        "local://",
        "paramiko://h",
    ],
)
def test_a_bad_host_spec_is_a_clear_error(spec):
    with pytest.raises(ShellSpecError, match="bad host spec"):
        shell_from_spec(spec)


def test_the_probe_runs_through_a_shell_with_its_payload_on_stdin():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]

    def answer():
        conn, _ = server.accept()
        conn.sendall(b"220 here ESMTP\r\n")
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]  # bound, never listening: the connection is refused
    try:
        answers = run_probe(
            HostShell("here", ["env"]),
            {
                "probes": [
                    {"kind": "banner", "host": "127.0.0.1", "port": port, "timeout": 5},
                    {"kind": "banner", "host": "127.0.0.1", "port": closed_port, "timeout": 2},
                ]
            },
        )
    finally:
        server.close()
        closed.close()
    assert answers[0]["banner"] == "220 here ESMTP"
    assert answers[1]["banner"] is None and "ConnectionRefused" in answers[1]["error"]


# The CLI as a person runs it, with pytest and testinfra made unimportable.
NO_PYTEST = """
import sys
sys.modules["pytest"] = None
sys.modules["testinfra"] = None
from mailforge.cli import main
sys.argv = ["mailforge", *sys.argv[1:]]
main()
"""


def mailforge_without_pytest(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_PYTEST, *args], capture_output=True, text=True, timeout=300)


def test_verify_needs_a_probing_host_and_a_good_spec(tmp_path):
    render = str(tmp_path / "r")
    result = mailforge_without_pytest("verify", str(INVENTORIES["example"]), "--render-dir", render)
    assert result.returncode == 2 and "--probe-from" in result.stderr and "Traceback" not in result.stderr
    result = mailforge_without_pytest("verify", str(INVENTORIES["example"]), "--render-dir", render, "--probe-from", "admin@10.0.0.5")
    assert result.returncode == 2 and "bad host spec 'admin@10.0.0.5'" in result.stderr and "Traceback" not in result.stderr


def test_verify_of_unreachable_hosts_exits_2_naming_one(tmp_path):
    if shutil.which("ssh") is None:
        pytest.skip("no ssh client here")
    inventory = unreachable_example(tmp_path)
    result = mailforge_without_pytest("verify", str(inventory), "--probe-from", "ssh://nobody@127.0.0.1:1")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "cannot reach lb" in result.stderr and "Traceback" not in result.stderr


def test_the_front_door_is_where_the_worlds_mail_comes_in():
    """A managed balancer's address; an external balancer's fqdn (its MX name), or in the lab its
    stand-in; without a balancer, the first relay's inbound port."""
    from mailforge.inventory import load_inventory

    assert _front_door(load_inventory(INVENTORIES["example"])) == ("10.232.0.10", 25)
    elb = load_inventory(INVENTORIES["elb"])
    assert _front_door(elb) == ("mx.example.net", 25)
    assert _front_door(elb, stand_in=("10.234.0.10", 25)) == ("10.234.0.10", 25)
    assert _front_door(load_inventory(INVENTORIES["mx-proxy"])) == ("10.231.1.25", 25)


def test_verify_without_a_front_door_stops_before_asking_any_host(tmp_path):
    """An external balancer without fqdn (the elb-relays contract): the relays take mail only from the
    balancer, so there is nowhere to send the probe mail; verify says so, exit 2, no host asked."""
    result = mailforge_without_pytest("verify", str(INVENTORIES["elb-relays"]), "--probe-from", "ssh://nobody@127.0.0.1:1", "--render-dir", str(tmp_path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "external balancer elb has no fqdn, so verify has no front door" in result.stderr and "Traceback" not in result.stderr
    assert "cannot reach" not in result.stderr


def test_concurrent_probes_wait_together_and_answer_in_order():
    """verify checks every wall at once: a server that greets its first client only once a second one has
    connected answers both when the probes run concurrently, and leaves the first waiting (no banner) when
    they run in order. So twenty walls that hold cost one timeout, not twenty."""

    def server_greeting_in_pairs() -> tuple[socket.socket, int]:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen()

        def answer():
            first, _ = server.accept()
            try:
                second, _ = server.accept()
            except OSError:  # closed: the probes ran in order and the first gave up
                first.close()
                return
            for n, conn in enumerate((first, second), 1):
                conn.sendall(f"220 client {n}\r\n".encode())
                conn.close()

        threading.Thread(target=answer, daemon=True).start()
        return server, server.getsockname()[1]

    results = {}
    for concurrent in (True, False):
        server, port = server_greeting_in_pairs()
        try:
            probes = [{"kind": "banner", "host": "127.0.0.1", "port": port, "timeout": 2, "n": n} for n in (1, 2)]
            results[concurrent] = run_probe(HostShell("here", ["env"]), {"concurrent": concurrent, "probes": probes})
        finally:
            server.close()
    assert {a["banner"] for a in results[True]} == {"220 client 1", "220 client 2"}
    assert results[False][0]["banner"] is None  # in order, the first probe waited alone and timed out
