"""Prometheus metrics, with `monitoring` in the inventory: one exporter per Postfix instance, and
HAProxy's own on the balancers (its frontend is in `balancer.py`).

The Postfix exporter is Debian's prometheus-postfix-exporter. The default instance's runs as the
package ships it (its init script and systemd unit read /etc/default/prometheus-postfix-exporter);
each postmulti instance gets an exporter of its own, with an init script and defaults file named
after the instance, since the package runs one. Each listens on the host's own address only, and
the firewall (`firewall.host_openings`) opens its port to the monitoring networks alone.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from ..inventory import Host
from ..inventory.roles import DEFAULT_INSTANCE
from .files import EXPORTER_RESTART, RenderedFile, header, template

SERVICE = "prometheus-postfix-exporter"  # Debian's package, its init script and its defaults file
MAIL_LOG = "/var/log/mail.log"


def service_name(directory: str) -> str:
    """The exporter's service for a Postfix instance: Debian's own for the default instance,
    prometheus-postfix-exporter-postfix-inbound for /etc/postfix-inbound."""
    return SERVICE if directory == DEFAULT_INSTANCE else f"{SERVICE}-{PurePosixPath(directory).name}"


def queue_directory(directory: str) -> str:
    """Where the instance's queue is: /var/spool/postfix, or /var/spool/NAME for a postmulti instance
    (as `postfix.multi_instance_settings` sets it)."""
    return "/var/spool/postfix" if directory == DEFAULT_INSTANCE else f"/var/spool/{PurePosixPath(directory).name}"


def listen_address(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def postfix_exporters(host: Host, cluster: str) -> dict[str, RenderedFile]:
    """The settings (and, for a postmulti instance, the init script) of every Postfix exporter of the host."""
    files: dict[str, RenderedFile] = {}
    assert host.address is not None  # relays and cores have an address
    for directory, port in host.exporters.items():
        name = service_name(directory)
        # The exporter counts log lines of syslog name "postfix" only: a postmulti instance's
        # (postfix-inbound/smtpd) it would never see, and the default instance's it would count
        # again. So only the default instance's exporter reads the log; the others read their queue.
        logfile = MAIL_LOG if directory == DEFAULT_INSTANCE else "/dev/null"
        files[f"/etc/default/{name}"] = RenderedFile(
            template(
                "etc/default/prometheus-postfix-exporter",
                header=header(cluster),
                directory=directory,
                service=name,
                listen=listen_address(host.address, port),
                showq=f"{queue_directory(directory)}/public/showq",
                logfile=logfile,
            ),
            EXPORTER_RESTART,
        )
        if directory != DEFAULT_INSTANCE:
            files[f"/etc/init.d/{name}"] = RenderedFile(
                template("etc/init.d/prometheus-postfix-exporter-instance", header=header(cluster), service=name, directory=directory),
                EXPORTER_RESTART,
                mode="0755",
            )
    return files
