"""The rotation against a real HAProxy on this machine, and the PROXY greeting probe against a real
listener: what `deploy`, `maps` and `status` read and tell the balancer."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time

import pytest

from mailforge.probes import run_probe
from mailforge.remote import HostShell
from mailforge.rotation import Hooks, RelaySpot, Rotation, RotationPlan, parse_stat, servers, set_state

HERE = HostShell("here", ["env"])

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs haproxy (scripts/setup installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeRelay:
    """A listener that speaks just enough SMTP for a greeting and records what it was sent first."""

    def __init__(self):
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen()
        self.port = self.server.getsockname()[1]
        self.first: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    head = conn.recv(200)
                    self.first.append(head)
                    conn.sendall(b"220 relay ESMTP\r\n")
                    buffer = b""
                    while b"QUIT" not in buffer:
                        data = conn.recv(200)
                        if not data:
                            break
                        buffer += data
                        if data.startswith(b"EHLO"):
                            conn.sendall(b"250-relay\r\n250 PIPELINING\r\n")
                    conn.sendall(b"221 bye\r\n")
                except OSError:
                    pass


@pytest.fixture
def haproxy(tmp_path):
    relay = FakeRelay()
    dead = free_port()
    admin = tmp_path / "admin.sock"
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        f"""global
    stats socket {admin} mode 600 level admin
defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend smtp
    bind 127.0.0.1:{free_port()}
    default_backend relays
backend relays
    server relay1 127.0.0.1:{relay.port} check inter 500ms
    server relay2 127.0.0.1:{dead} check inter 500ms fall 1
"""
    )
    process = subprocess.Popen(["haproxy", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not admin.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        yield str(admin), relay
    finally:
        process.terminate()
        process.wait(10)
        relay.server.close()


def settle(admin: str, want: dict[str, str]) -> dict[str, str]:
    deadline = time.monotonic() + 20
    while True:
        states = {name: s.state for name, s in servers(HERE, admin).items()}
        if states == want or time.monotonic() > deadline:
            return states
        time.sleep(0.2)


def test_drain_and_ready_as_haproxy_reports_them(haproxy):
    admin, _ = haproxy
    assert settle(admin, {"relay1": "up", "relay2": "down"}) == {"relay1": "up", "relay2": "down"}
    set_state(HERE, ["relay1", "relay2"], "drain", admin)
    # relay2's checks fail as well: it is still reported drained (an admin took it out), not merely down
    assert settle(admin, {"relay1": "drain", "relay2": "drain"}) == {"relay1": "drain", "relay2": "drain"}
    seen = servers(HERE, admin)
    assert seen["relay1"].healthy and not seen["relay2"].healthy
    set_state(HERE, ["relay1"], "ready", admin)
    set_state(HERE, ["relay2"], "maint", admin)
    assert settle(admin, {"relay1": "up", "relay2": "maint"}) == {"relay1": "up", "relay2": "maint"}


def test_a_server_haproxy_does_not_know_is_refused(haproxy):
    from mailforge.rotation import RotationError

    admin, _ = haproxy
    with pytest.raises(RotationError, match="refused to set drain"):
        set_state(HERE, ["relay9"], "drain", admin)


@pytest.mark.parametrize("version, head", [("v1", b"PROXY TCP4 127.0.0.1 127.0.0.1 "), ("v2", b"\r\n\r\n\x00\r\nQUIT\n\x21\x11")])
def test_the_greeting_probe_speaks_proxy_then_smtp(version, head):
    relay = FakeRelay()
    try:
        [answer] = run_probe(HERE, {"probes": [{"kind": "greeting", "host": "127.0.0.1", "port": relay.port, "proxy": version}]})
    finally:
        relay.server.close()
    assert answer["ok"], answer
    assert relay.first[0].startswith(head)
    assert answer["replies"] == ["220 relay ESMTP", "250 PIPELINING", "221 bye"]


def test_the_greeting_probe_fails_on_a_closed_port():
    [answer] = run_probe(HERE, {"probes": [{"kind": "greeting", "host": "127.0.0.1", "port": free_port(), "proxy": "v1", "timeout": 3}]})
    assert not answer["ok"] and "ConnectionRefused" in answer["error"]


def plan(port: int, hooks: list[Hooks]) -> RotationPlan:
    return RotationPlan({"relay1": RelaySpot("relay1", "127.0.0.1", "relay1.example.com")}, [], 0, hooks, port, "v2")


def test_external_hooks_run_with_the_relays_values_and_a_failed_proof_keeps_it_out(tmp_path):
    log = tmp_path / "hooks.log"
    hooks = [Hooks("elb", f"echo out {{relay}} {{address}} >> {log}", f"echo back {{fqdn}} >> {log}")]
    relay = FakeRelay()
    try:
        rotation = Rotation(plan(relay.port, hooks), {"relay1": HERE})
        assert [s.action for s in rotation.take_out(["relay1"])] == ["drained"]
        assert [s.action for s in rotation.put_back(["relay1"])] == ["back"]
    finally:
        relay.server.close()
    assert log.read_text() == "out relay1 127.0.0.1\nback relay1.example.com\n"

    rotation = Rotation(plan(free_port(), hooks), {"relay1": HERE})
    [step] = rotation.put_back(["relay1"])
    assert step.action == "kept out" and not step.ok and "PROXY SMTP probe" in step.detail
    assert log.read_text().count("back") == 1  # not put back


def test_a_failing_take_out_hook_stops_before_anything_changes(tmp_path):
    from mailforge.rotation import RotationError

    rotation = Rotation(plan(free_port(), [Hooks("elb", "echo throttled >&2; exit 3", "true")]), {"relay1": HERE})
    with pytest.raises(RotationError, match=r"relay1: elb's rotation hook failed \(exit 3\): throttled"):
        rotation.take_out(["relay1"])


def test_show_stat_words_map_to_states():
    header = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status"
    rows = [
        "relays,a,0,0,3,5,,9,0,0,,0,,0,0,0,0,UP,1,1,0,0,0,1,0,,1,3,1,,9,,2,0,,1,L7OK",
        "relays,b,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN 1/2,1,1,0,1,1,1,0,,1,3,2,,0,,2,0,,0,L4CON",
        "relays,c,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT,1,1,0,0,0,1,0,,1,3,3,,0,,2,0,,0,",
        "relays,BACKEND,0,0,3,5,,9,0,0,,0,,0,0,0,0,UP,1,1,0,,0,1,0,,1,3,0,,9,,1,0,,1,",
    ]
    states = parse_stat("\n".join([header, *rows]))
    assert {n: (s.state, s.sessions, s.check) for n, s in states.items()} == {"a": ("up", 3, "L7OK"), "b": ("down", 0, "L4CON"), "c": ("maint", 0, "")}


def test_relays_behind_hooks_change_one_at_a_time():
    from mailforge.rotation import batch_size

    assert batch_size(plan(25, []), 3) == (3, None)
    size, why = batch_size(plan(25, [Hooks("elb", "true", "true")]), 3)
    assert size == 1 and why is not None and "behind elb change one at a time" in why
