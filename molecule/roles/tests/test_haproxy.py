"""mailforge_haproxy: HAProxy runs the rendered haproxy.cfg and listens on the balancer's frontend."""

from host_checks import assert_live_file_is_rendered, listens_on, role_defaults, topology

testinfra_hosts = ["ansible://balancers"]  # the instances that converge this role (molecule.yml)

HOST = "lb"  # mailforge_host in molecule.yml
LB = next(b for b in topology()["load_balancers"] if b["name"] == HOST)
CONFIG = role_defaults("mailforge_haproxy")["mailforge_haproxy_config"]


def test_haproxy_installed(host):
    assert host.package("haproxy").is_installed


def test_config_is_the_rendered_one(host):
    assert_live_file_is_rendered(host, HOST, CONFIG)


def test_config_check_passes(host):
    check = host.run(f"haproxy -c -f {CONFIG}")
    assert check.rc == 0, check.stdout + check.stderr


def test_haproxy_running(host):
    assert host.run("service haproxy status").rc == 0
    pids = host.check_output("pidof haproxy").split()
    assert pids
    # the running process was started with the live configuration
    cmdline = host.file(f"/proc/{pids[0]}/cmdline").content_string.split("\0")
    assert CONFIG in cmdline


def test_listens_on_the_frontend(host):
    port = LB.get("frontend_port", 25)
    assert listens_on(host, LB["address"], port)
    # and accepts connections there (whether or not the relay behind it, converged in the same
    # scenario, is up yet: the accept is what is checked)
    result = host.run("python3 -c \"import socket; socket.create_connection(('%s', %d), timeout=10).close()\"" % (LB["address"], port))
    assert result.rc == 0, result.stderr


def test_firewall_opens_the_frontend(host):
    rules = host.check_output("iptables -S INPUT")
    assert "-P INPUT DROP" in rules
    assert '--dport 25 -m comment --comment "mailforge: public smtp" -j ACCEPT' in rules
