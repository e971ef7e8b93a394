"""Where mailforge's own files are: the Ansible roles and playbooks it drives and the scripts the lab
runs. The only module that knows; everything else asks here."""

from __future__ import annotations

from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
ROLES = PROJECT / "roles"
PLAYBOOKS = PROJECT / "playbooks"
SITE_PLAYBOOK = PLAYBOOKS / "site.yml"
SCRIPTS = PROJECT / "scripts"


def script(name: str) -> Path:
    """One of the lab's scripts (container-engine, lab-image)."""
    return SCRIPTS / name
