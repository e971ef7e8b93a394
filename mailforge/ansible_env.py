"""The environment a deploy runs Ansible in: which ansible.cfg (the one beside the topology, in
Ansible's own order), mailforge's collection on the collections path, mailforge's defaults where
that file says nothing, and whether the connection plugins the hosts ask for are installed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import MailforgeError
from .hosts import Reach
from .resources import COLLECTIONS


class AnsibleSetupError(MailforgeError):
    """Ansible cannot be run as asked: an ansible.cfg that must not be trusted, a connection plugin
    that is not installed."""


# What mailforge runs Ansible with unless the ansible.cfg in use (or an ANSIBLE_* variable) says
# otherwise: Ansible's configuration key -> the environment variable that sets it.
# (ansible-runner itself fixes a few more: its stdout callback, no retry files, a fact cache per run.)
SOFT_DEFAULTS = {"ANSIBLE_PIPELINING": ("ANSIBLE_PIPELINING", "True")}
SSH_RETRIES = "3"  # the ssh connection plugin's `retries`, unless ansible.cfg or the environment sets it


def _ini_sets(cfg: Path | None, section: str, key: str) -> bool:
    """Whether the ansible.cfg in use sets `key` in `section` (a connection plugin's setting, which
    Ansible's ConfigManager cannot be asked about before the plugin is loaded)."""
    import configparser

    if cfg is None:
        return False
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read(cfg)
    except configparser.Error:
        return False
    return parser.has_option(section, key)


def config_file(inventory_dir: Path) -> Path | None:
    """The ansible.cfg a deploy runs with, in Ansible's own order with the inventory directory in the
    place of the current one: $ANSIBLE_CONFIG, INVENTORY/ansible.cfg, then ./ansible.cfg,
    ~/.ansible.cfg, /etc/ansible/ansible.cfg (the first that exists)."""
    from ansible.config.manager import find_ini_config_file

    named = os.environ.get("ANSIBLE_CONFIG")
    if named:
        path = Path(named).expanduser()
        path = path / "ansible.cfg" if path.is_dir() else path
        if path.is_file():
            return path.resolve()
    beside = inventory_dir.resolve() / "ansible.cfg"
    if beside.is_file():
        if beside.parent.stat().st_mode & 0o002:  # Ansible's own rule for ./ansible.cfg
            raise AnsibleSetupError(
                f"{beside}: not used, because {beside.parent} is world-writable (anyone could have written it): "
                f"chmod o-w {beside.parent}, or name the file in ANSIBLE_CONFIG"
            )
        return beside
    found = find_ini_config_file()
    return Path(found).resolve() if found else None


def ansible_settings(inventory_dir: Path) -> tuple[dict[str, str], Path | None]:
    """(the environment that runs Ansible with the ansible.cfg `config_file` chose, that file): its
    settings stand; mailforge adds its collection in front of the collections path and its
    SOFT_DEFAULTS where neither the file nor the environment sets them."""
    from ansible.config.manager import ConfigManager

    cfg = config_file(inventory_dir)
    manager = ConfigManager(str(cfg) if cfg else None)
    env: dict[str, str] = {}
    if cfg is not None:
        env["ANSIBLE_CONFIG"] = str(cfg)
    for key, (variable, value) in SOFT_DEFAULTS.items():
        if manager.get_config_value_and_origin(key)[1] == "default":
            env[variable] = value
    if "ANSIBLE_SSH_RETRIES" not in os.environ and not _ini_sets(cfg, "ssh_connection", "retries"):
        # ssh's shared master connection (ControlPersist) can end just as a task is handed to it, and the
        # task fails "unreachable" though the host answers: Ansible's ssh plugin retries exit 255.
        env["ANSIBLE_SSH_RETRIES"] = SSH_RETRIES
    paths, origin = manager.get_config_value_and_origin("COLLECTIONS_PATHS")
    if origin == "default":  # Ansible's default, whose template ConfigManager leaves unrendered
        paths = [str(Path(manager.get_config_value("ANSIBLE_HOME")).expanduser() / "collections"), "/usr/share/ansible/collections"]
    env["ANSIBLE_COLLECTIONS_PATH"] = os.pathsep.join([str(COLLECTIONS), *[str(p) for p in paths or []]])
    return env, cfg


DOCKER_COLLECTION = ("community", "docker")


def _has_collection(namespace: str, name: str, paths: list[str]) -> bool:
    """Whether Ansible finds the collection on `paths` (ANSIBLE_COLLECTIONS_PATH) or, as it also
    does, in an ansible_collections directory on Python's path (where the `ansible` package puts it)."""
    for entry in [*paths, *sys.path]:
        base = Path(entry or ".").expanduser()
        root = base if base.name == "ansible_collections" else base / "ansible_collections"
        if (root / namespace / name).is_dir():
            return True
    return False


def check_connections(reaches: dict[str, Reach], names: list[str], collections_path: str) -> None:
    """Refuse, before anything runs, a connection whose Ansible plugin is not installed (the docker
    connection comes with the `ansible` package: mailforge's `docker` extra)."""
    docker = [name for name in names if reaches[name].plugin == "docker"]
    if docker and not _has_collection(*DOCKER_COLLECTION, collections_path.split(os.pathsep)):
        raise AnsibleSetupError(
            f"{', '.join(docker)} {'is' if len(docker) == 1 else 'are'} reached with Ansible's docker connection "
            "(community.docker.docker), which is not installed: install mailforge with its docker extra "
            "(pipx install 'mailforge[docker]', or pip install 'mailforge[docker]'), or reach the hosts over SSH"
        )
