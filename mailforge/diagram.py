"""A picture of the cluster, as Graphviz DOT text: who takes mail from whom, on which port, with which
PROXY version, and who each host's firewall admits. Pure (a topology in, text out): `mailforge graph`
hands the text to Graphviz's `dot` for SVG or PNG.

The firewall lines come from `render.firewall.host_openings`, the same openings the rendered iptables
rules hold, so the picture cannot say something the firewall does not do.
"""

from __future__ import annotations

from dataclasses import dataclass

from .inventory import Host, LoadBalancer, Role, Topology, hosts_of
from .render.firewall import ANYWHERE, Opening, host_openings

# Node ids of what is not a host hold a space, which no host name has (see inventory.fields): no clash.
INTERNET_IN, INTERNET_OUT = "the Internet (senders)", "the Internet (recipients)"


@dataclass(frozen=True)
class Box:
    """One host in the picture, with what its label says (also what `graph --json` reports)."""

    name: str
    role: str  # load balancer, external load balancer, relay, MX proxy, core
    fqdn: str | None
    address: str | None
    listens: list[int]
    admits: list[str]  # what its firewall admits: ":port from sources (why)"; none for an external balancer
    mx: str  # whether the MX records name it, a hint when they cannot, else ""
    connects_from: tuple[str, ...] = ()  # an external balancer's source networks


def _sources(opening: Opening) -> str:
    return "anywhere" if opening.sources == ANYWHERE else ", ".join(opening.sources)


def _admits(openings: list[Opening]) -> list[str]:
    return [f":{o.port} from {_sources(o)} ({o.why})" for o in openings]


def _mx_note(t: Topology, host: Host | LoadBalancer) -> str:
    """Whether the MX records name this host: the balancers with an fqdn, else (no balancer) the relays."""
    if isinstance(host, LoadBalancer):
        return "the MX records name it" if host.fqdn else "no fqdn, so no MX can name it: see mailforge dns zone"
    if host.role in (Role.RELAY, Role.MX_PROXY) and not t.load_balancers:
        return "the MX records name it"
    return ""


def boxes(topology: Topology) -> list[Box]:
    """Every host drawn: managed and external balancers, relays and MX proxies, cores, in the inventory's order."""
    t = topology
    hosts = {h.name: h for h in hosts_of(t)}
    found = []
    for lb in t.load_balancers:
        if lb.external:
            found.append(Box(lb.name, "external load balancer", lb.fqdn, lb.address, [lb.frontend_port], [], _mx_note(t, lb), tuple(lb.source_networks)))
        else:
            h = hosts[lb.name]
            found.append(Box(lb.name, "load balancer (HAProxy)", lb.fqdn, lb.address, h.ports, _admits(host_openings(h)), _mx_note(t, lb)))
    for name, h in hosts.items():
        if h.role is Role.BALANCER:
            continue
        role = {Role.RELAY: "relay (postscreen)", Role.MX_PROXY: "MX proxy (postmulti)", Role.CORE: "core"}[h.role]
        found.append(Box(name, role, h.fqdn, h.address, h.ports, _admits(host_openings(h)), _mx_note(t, h)))
    return found


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _label(lines: list[str]) -> str:
    """A multi-line DOT label, each line left-aligned."""
    return '"' + "".join(line.replace("\\", "\\\\").replace('"', '\\"') + "\\l" for line in lines) + '"'


def _attrs(**attrs: str) -> str:
    return "[" + ", ".join(f"{k}={v}" for k, v in attrs.items()) + "]"


def _box_lines(box: Box) -> list[str]:
    lines = [f"{box.name}: {box.role}", " ".join(x for x in (box.fqdn, box.address) if x) or "(no name or address in the inventory)"]
    if box.mx:
        lines.append(box.mx)
    if box.role == "external load balancer":
        lines.append(f"listens :{box.listens[0]}; not managed by mailforge")
        lines += [f"connects to the relays from {', '.join(box.connects_from)}"] if box.connects_from else []
    elif box.listens:
        lines.append("listens " + ", ".join(f":{p}" for p in box.listens))
    lines += [f"admits {a}" for a in box.admits]
    return lines


def _senders(t: Topology) -> list[str]:
    """Who delivers the hosted domains' mail to the Internet: an MX proxy's outbound instance, else the cores
    (as `dns.outbound_senders`, which SPF authorises)."""
    proxies = [r.name for r in t.relays if r.instances and r.instances.outbound]
    return [f"{name} postfix-outbound" for name in proxies] if proxies else [c.name for c in t.cores]


def dot(topology: Topology) -> str:
    """The cluster as a DOT digraph, left to right: the Internet, balancers, relays (or an MX proxy's instances),
    cores and the user networks, and the Internet again for outbound mail. Same topology in, same text out."""
    t = topology
    admin = ", ".join(t.firewall.admin_networks) or "any address"
    title = [
        f"mailforge cluster {t.cluster}: mail for {', '.join(t.domains)}",
        f"every firewall: policy DROP; SSH :{t.firewall.ssh_port} admitted from {admin}",
    ]
    out = [
        f"// The topology of mailforge cluster '{t.cluster}' (generated by `mailforge graph`).",
        f"digraph {_quote(t.cluster)} {{",
        f"  graph {_attrs(rankdir='LR', fontname='Helvetica', fontsize='12', labelloc='t', labeljust='l', nodesep='0.3', ranksep='0.9', label=_label(title))};",
        f"  node {_attrs(fontname='Helvetica', fontsize='10', shape='box', style='rounded')};",
        f"  edge {_attrs(fontname='Helvetica', fontsize='9')};",
        f"  {_quote(INTERNET_IN)} {_attrs(label=_quote('Internet: senders'), shape='ellipse')};",
    ]
    drawn = boxes(t)
    by_name = {b.name: b for b in drawn}
    edges: list[str] = []
    outside: list[str] = []  # nodes drawn outside the relays' box (an MX proxy's trusted networks)

    def edge(a: str, b: str, label: str, **extra: str) -> None:
        edges.append(f"  {_quote(a)} -> {_quote(b)} {_attrs(label=_quote(label), **extra)};")

    balancers = list(t.load_balancers)
    for lb in balancers:
        box = by_name[lb.name]
        style = "dashed" if lb.external else "rounded"
        out.append(f"  {_quote(lb.name)} {_attrs(label=_label(_box_lines(box)), style=_quote(style))};")
        edge(INTERNET_IN, lb.name, f"SMTP :{lb.frontend_port}")
    out.append(f"  subgraph {_quote('cluster_relays')} {{")
    out.append(f"    graph {_attrs(label=_quote('relays: recipient and policy checks, never store mail'), style='dashed', fontsize='10')};")
    for r in t.relays:
        box = by_name[r.name]
        if r.instances:
            out.append(f"    subgraph {_quote('cluster_' + r.name)} {{")
            out.append(f"      graph {_attrs(label=_label(_box_lines(box)), style='solid', fontsize='10', labeljust='l')};")
            out.append(f"      {_quote(r.name + ' postfix')} {_attrs(label=_quote('postfix (default instance): loopback only'))};")
            if r.instances.inbound:
                out.append(
                    f"      {_quote(r.name + ' postfix-inbound')} {_attrs(label=_quote(f'postfix-inbound :{r.instances.inbound.port}: public mail, relay checks'))};"
                )
                edge(INTERNET_IN, r.name + " postfix-inbound", f"SMTP :{r.instances.inbound.port}")
                for c in t.cores:
                    edge(r.name + " postfix-inbound", c.name, "SMTP :25, inbound mail")
            if r.instances.outbound:
                port = r.instances.outbound.port
                out.append(
                    f"      {_quote(r.name + ' postfix-outbound')} {_attrs(label=_quote(f'postfix-outbound :{port}: submission, sends to the Internet'))};"
                )
                for i, net in enumerate(r.instances.outbound.trusted_networks):
                    node = f"{r.name} trusted network {i}"
                    outside.append(f"  {_quote(node)} {_attrs(label=_label(['trusted network', net]), shape='ellipse')};")
                    edge(node, r.name + " postfix-outbound", f"submission :{port}")
            out.append("    }")
            continue
        out.append(f"    {_quote(r.name)} {_attrs(label=_label(_box_lines(box)))};")
        if balancers:
            for lb in balancers:
                proxy = "no PROXY" if lb.proxy_protocol == "none" else f"PROXY {lb.proxy_protocol}"
                edge(lb.name, r.name, f":{lb.backend_port or 25}, {proxy}")
        else:
            edge(INTERNET_IN, r.name, "SMTP :25")
        for c in t.cores:
            edge(r.name, c.name, "SMTP :25, inbound mail")
    out.append("  }")
    out += outside
    if t.cores:
        out.append(f"  subgraph {_quote('cluster_cores')} {{")
        out.append(f"    graph {_attrs(label=_quote('cores: hidden, never an MX'), style='dashed', fontsize='10')};")
        for c in t.cores:
            out.append(f"    {_quote(c.name)} {_attrs(label=_label(_box_lines(by_name[c.name])))};")
        out.append("  }")
    for c in t.cores:
        for i, net in enumerate(c.user_networks):
            node = f"{c.name} user network {i}"
            out.append(f"  {_quote(node)} {_attrs(label=_label(['user network', net]), shape='ellipse')};")
            edge(node, c.name, "SMTP :25, outbound mail")
    senders = _senders(t)
    if senders:
        out.append(f"  {_quote(INTERNET_OUT)} {_attrs(label=_quote('Internet: recipients'), shape='ellipse')};")
        for sender in senders:
            edge(sender, INTERNET_OUT, "outbound mail", style="dashed")
    return "\n".join(out + edges + ["}"]) + "\n"
