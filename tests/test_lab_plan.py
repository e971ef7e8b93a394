"""Labs that cannot hurt each other, decided without an engine: what `lab up` refuses and what `lab down`
removes, given what the engine already holds.

The shipped example and the lb-relays-core layout both say `cluster: example`, so their labs plan the
same container and network names (mf-example-dns, mf-example-net, ...). Everything `lab up` makes is
labelled with its resolved inventory directory; only that label decides who owns what.
"""

from __future__ import annotations

import shutil

import pytest
from conftest import INVENTORIES, REPO

from mailforge import lab
from mailforge.inventory import load_topology


def planned(name: str):
    return lab.plan(load_topology(INVENTORIES[name]))


def made_by(plan: lab.LabPlan) -> list[lab.Found]:
    """What the engine holds once `lab up` of `plan` has run: its containers and network, with the labels it gives them."""

    def labels(args: list[str]) -> dict[str, str]:
        return dict(value.split("=", 1) for flag, value in zip(args[::2], args[1::2], strict=True) if flag == "--label")

    found = [lab.Found("container", c.name, labels(plan.labels(c.host))) for c in plan.containers]
    return found + [lab.Found("network", plan.network, labels(plan.labels()), (plan.subnet,))]


def test_two_inventories_of_one_cluster_name_plan_the_same_names_but_not_the_same_owner():
    example, other = planned("example"), planned("lb-relays-core")
    assert example.cluster == other.cluster == "example"
    assert example.network == other.network == "mf-example-net"
    shared = {c.name for c in example.containers} & {c.name for c in other.containers}
    assert shared == {"mf-example-dns", "mf-example-client", "mf-example-spammer"}
    assert example.owner == str(INVENTORIES["example"].resolve()) != other.owner


def test_lab_up_of_the_other_inventory_is_refused_naming_every_clash():
    example, other = planned("example"), planned("lb-relays-core")
    problems = lab.clashes(other, made_by(example))
    whose = f"belongs to the lab of {example.owner}"
    assert problems == [
        f"container mf-example-dns {whose}",
        f"container mf-example-client {whose}",
        f"container mf-example-spammer {whose}",
        f"network mf-example-net {whose}",
    ]
    message = lab.clash_message(other, problems)
    assert "nothing was changed" in message and "lab down" in message and "another `cluster` name" in message


def test_a_lab_adopts_what_it_made_itself():
    example = planned("example")
    assert lab.clashes(example, made_by(example)) == []
    assert lab.clashes(example, []) == []


def test_containers_and_networks_without_the_owner_label_are_not_adopted():
    example = planned("example")
    unlabelled = [lab.Found("container", "mf-example-core", {"mailforge.cluster": "example"}), lab.Found("network", example.network, {}, (example.subnet,))]
    problems = lab.clashes(example, unlabelled)
    assert problems == [
        "container mf-example-core belongs to a lab of cluster 'example' made without the mailforge.inventory label (Molecule, or an older mailforge)",
        "network mf-example-net belongs to something other than mailforge",
    ]


def test_a_network_of_another_name_whose_subnet_overlaps_is_a_clash():
    example = planned("example")
    overlapping = lab.Found("network", "mf-other-net", {lab.OWNER_LABEL: "/srv/other"}, ("10.232.0.0/16",))
    elsewhere = lab.Found("network", "podman", {}, ("10.88.0.0/16",))
    assert lab.clashes(example, [overlapping, elsewhere]) == [
        "network mf-other-net of the lab of /srv/other has subnet 10.232.0.0/16, which overlaps this lab's 10.232.0.0/24"
    ]


def test_this_labs_network_with_another_subnet_says_to_bring_it_down_first():
    example = planned("example")
    [network] = [f for f in made_by(example) if f.kind == "network"]
    moved = lab.Found("network", network.name, network.labels, ("10.99.0.0/24",))
    [problem] = lab.clashes(example, [moved])
    assert "has subnet 10.99.0.0/24, and the inventory now needs 10.232.0.0/24" in problem and "lab down" in problem


def test_lab_down_of_the_other_inventory_removes_nothing_of_the_running_lab():
    example, other = planned("example"), planned("lb-relays-core")
    remove, keep = lab.leftovers(other, made_by(example))
    assert remove == []
    assert sorted(f.name for f in keep) == ["mf-example-client", "mf-example-dns", "mf-example-net", "mf-example-spammer"]


def test_lab_down_removes_everything_its_own_lab_up_made_network_last():
    example = planned("example")
    stray = lab.Found("container", "mf-example-old-relay", {lab.OWNER_LABEL: example.owner})  # a host since dropped from the inventory
    remove, keep = lab.leftovers(example, [*made_by(example), stray])
    assert [f.name for f in remove] == [c.name for c in example.containers] + ["mf-example-old-relay", "mf-example-net"]
    assert keep == []


def test_a_copy_of_the_inventory_elsewhere_is_another_lab(tmp_path):
    copy = tmp_path / "example"
    shutil.copytree(INVENTORIES["example"], copy)
    example, twin = planned("example"), lab.plan(load_topology(copy))
    assert [c.name for c in twin.containers] == [c.name for c in example.containers]
    assert len(lab.clashes(twin, made_by(example))) == len(example.containers) + 1


@pytest.mark.parametrize("name", sorted(INVENTORIES))
def test_every_inventory_gets_labels_naming_its_directory(name):
    plan = planned(name)
    assert plan.labels("relay1") == [
        "--label",
        f"mailforge.cluster={plan.cluster}",
        "--label",
        f"mailforge.inventory={INVENTORIES[name].resolve()}",
        "--label",
        "mailforge.host=relay1",
    ]


# --- an external balancer's stand-in ------------------------------------------------------------


def test_an_external_balancer_gets_a_stand_in_inside_its_source_networks():
    """The lab has no inventory host for a cloud's balancer: it plans one container that stands in for
    it, where the relays' firewall and postscreen expect the balancer (its source_networks), named
    mf-<cluster>-<balancer> and labelled like the rest, so `lab down` removes it with the lab."""
    import ipaddress

    plan = planned("elb")
    [stand_in] = [c for c in plan.containers if c.role == lab.STAND_IN]
    assert (stand_in.name, stand_in.host, stand_in.address, stand_in.hostname) == ("mf-elb-elb", "elb", "10.234.0.10", "mx.example.net")
    assert ipaddress.ip_address(stand_in.address) in ipaddress.ip_network("10.234.0.0/28")
    assert [c.address for c in plan.containers if c.host in ("client", "spammer")] == ["10.234.0.200", "10.234.0.201"]  # strangers, outside it
    assert "elb" not in lab.reaches(load_topology(INVENTORIES["elb"]))  # not an inventory host: nothing is deployed to it
    remove, _ = lab.leftovers(plan, made_by(plan))
    assert "mf-elb-elb" in [f.name for f in remove]
    assert all(c.role != lab.STAND_IN for name in ("example", "lb-relays-core", "mx-proxy") for c in planned(name).containers)


def test_the_stand_in_takes_the_balancers_address_or_says_why_it_has_none(tmp_path):
    from mailforge.inventory import load_inventory

    source = INVENTORIES["elb"]
    for name in ("topology.yml", "users.txt"):
        shutil.copy(source / name, tmp_path / name)
    text = (source / "topology.yml").read_text()
    (tmp_path / "topology.yml").write_text(
        text.replace("    source_networks: [10.234.0.0/28]", "    address: 10.234.0.7\n    source_networks: [10.234.0.0/28]")
    )
    assert lab.plan(load_topology(tmp_path)).by_host("elb").address == "10.234.0.7"
    assert lab.front_door(load_inventory(tmp_path)) == ("10.234.0.7", 25)
    (tmp_path / "topology.yml").write_text(text.replace("source_networks: [10.234.0.0/28]", "source_networks: [192.0.2.0/28]"))
    with pytest.raises(
        lab.LabError,
        match=r"no free address in 10\.234\.0\.0/24 for the stand-in of external balancer elb \(its address, or one in its source_networks 192\.0\.2\.0/28\)",
    ):
        lab.plan(load_topology(tmp_path))


def test_the_front_door_in_the_lab_is_the_stand_in_or_none():
    from mailforge.inventory import load_inventory

    assert lab.front_door(load_inventory(INVENTORIES["elb"])) == ("10.234.0.10", 25)
    assert lab.front_door(load_inventory(INVENTORIES["example"])) is None  # a managed balancer: verify finds it itself
    assert lab.front_door(load_inventory(INVENTORIES["mx-proxy"])) is None


@pytest.mark.tools
@pytest.mark.parametrize("proxy", ["v1", "v2", "none"])
def test_the_stand_in_behaves_as_a_cloud_balancer_and_haproxy_accepts_it(proxy, tmp_path):
    """The stand-in's haproxy.cfg (written by `lab up`, never rendered for the cluster): every relay at
    backend_port with the inventory's PROXY version, a plain TCP health check (no check-send-proxy, no
    SMTP dialogue: what a cloud balancer's TCP check does), no retry on another relay, the admin socket
    the rotation reads; and the real `haproxy -c` accepts it."""
    import subprocess

    from mailforge.inventory import load_inventory
    from mailforge.rotation import ADMIN_SOCKET, BACKEND

    inventory = load_inventory(INVENTORIES["elb"])
    lb = inventory.topology.load_balancers[0].model_copy(update={"proxy_protocol": proxy})
    cfg = lab.stand_in_cfg(inventory, lab.plan(inventory), lb)
    send = {"v1": " send-proxy", "v2": " send-proxy-v2", "none": ""}[proxy]
    assert f"    server relay1 10.234.0.21:25 check inter 5s fall 2 rise 2{send}\n" in cfg
    assert "bind 10.234.0.10:25" in cfg and f"backend {BACKEND}" in cfg and f"stats socket {ADMIN_SOCKET} " in cfg
    assert "tcp-check" not in cfg and "check-send-proxy" not in cfg and "redispatch" not in cfg and "retries 0" in cfg
    (tmp_path / "haproxy.cfg").write_text(cfg)
    result = subprocess.run(["haproxy", "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_nameless_external_balancer_is_the_mx_by_its_stand_ins_lab_name():
    """Without an fqdn `dns zone` prints no MX; the lab names the stand-in as it names a nameless
    managed balancer, so the lab's mail still finds the front door."""
    from mailforge.inventory import load_inventory

    inventory = load_inventory(INVENTORIES["elb-relays"])
    plan = lab.plan(inventory)
    records = {(r.name, r.rtype, r.value) for r in lab.lab_records(inventory, plan)}
    assert ("mail.example.io", "MX", "10 elb.lab.") in records and ("elb.lab", "A", "172.31.0.10") in records


# --- an MX proxy's outbound instance: strangers outside trusted_networks, a submitter inside ---------


def test_the_client_and_spammer_stand_outside_trusted_networks_and_a_submitter_inside():
    """inventories/mx-proxy trusts its whole /24 for outbound mail: the lab's network grows to a /23 so the
    client and the spammer can be strangers to the outbound instance, and a submitter stands inside."""
    import ipaddress

    from mailforge.inventory import load_inventory

    plan = lab.plan(load_inventory(REPO / "inventories" / "mx-proxy"))
    trusted = ipaddress.ip_network("10.233.0.0/24")
    at = {c.host: ipaddress.ip_address(c.address) for c in plan.containers}
    assert plan.subnet == "10.233.0.0/23" and all(a in ipaddress.ip_network(plan.subnet) for a in at.values())
    assert at["client"] not in trusted and at["spammer"] not in trusted and at["submitter"] in trusted
    assert len(set(at.values())) == len(at) and ipaddress.ip_address("10.233.0.1") not in at.values()  # .1: the engine's gateway
    assert {c.host: c.role for c in plan.containers if c.role == "client"} == {"client": "client", "spammer": "client", "submitter": "client"}
    assert plan.labels("submitter")[-1] == "mailforge.host=submitter"  # owned, so `lab down` removes it


def test_a_lab_without_an_outbound_instance_has_no_submitter():
    example = planned("example")
    assert example.subnet == "10.232.0.0/24" and example.get("submitter") is None
    assert (example.by_host("client").address, example.by_host("spammer").address) == ("10.232.0.200", "10.232.0.201")


def test_no_room_outside_the_trusted_networks_is_a_clear_error(tmp_path):
    inventory = tmp_path / "mx-proxy"
    shutil.copytree(REPO / "inventories" / "mx-proxy", inventory)
    topology = inventory / "topology.yml"
    topology.write_text(topology.read_text().replace("trusted_networks: [10.233.0.0/24]", "trusted_networks: [10.0.0.0/8]"))
    with pytest.raises(
        lab.LabError, match=r"no lab network up to 10\.0\.0\.0/8 has a free address for the lab's client \(outside every user network and trusted_networks\)"
    ):
        lab.plan(load_topology(inventory))
