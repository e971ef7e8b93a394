"""The inventory: what a cluster is, read from topology.yml and the recipient sources it names.

- `model`: the schema (pydantic), with the value types of `fields`;
- `positions`: YAML with the file:line:column of every key;
- `problems` and `partial`: pydantic's errors as located problems, and a best-effort model so one
  error does not hide the others; `checks`: the checks across keys, one named function each;
- `roles`: what each host is (balancer, relay, MX proxy, core) and what every command asks of it;
- `recipients` and `ldap`: the recipient sources;
- `load`: loading the topology alone, or with its recipients read.

It imports nothing that renders files or touches hosts.
"""

from .load import TOPOLOGY_FILE, Inventory, load_inventory, load_topology, resolve_topology_file
from .model import Core, LoadBalancer, Relay, Topology
from .recipients import RecipientSet
from .roles import GROUPS, Host, Role, hosts_of, rollout_order, suggested_mx_name

__all__ = [
    "GROUPS",
    "TOPOLOGY_FILE",
    "Core",
    "Host",
    "Inventory",
    "LoadBalancer",
    "RecipientSet",
    "Relay",
    "Role",
    "Topology",
    "hosts_of",
    "load_inventory",
    "load_topology",
    "resolve_topology_file",
    "rollout_order",
    "suggested_mx_name",
]
