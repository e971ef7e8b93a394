"""Where mailforge's own files are: the Ansible collection (roles and playbooks) it drives and the
scripts the lab runs, all inside the installed package. The only module that knows; everything
else asks here."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
COLLECTIONS = PACKAGE  # holds ansible_collections/: what ANSIBLE_COLLECTIONS_PATH names
COLLECTION = PACKAGE / "ansible_collections" / "mailforge" / "cluster"
ROLES = COLLECTION / "roles"
PLAYBOOKS = COLLECTION / "playbooks"
SITE_PLAYBOOK = PLAYBOOKS / "site.yml"
LAB_FILES = PACKAGE / "data" / "lab"
COLLECTION_NAME = "mailforge.cluster"  # the roles' names are mailforge.cluster.<role>


def role_dir(name: str) -> Path:
    """A role's directory, by its FQCN (mailforge.cluster.mailforge_relay) as the playbook and the
    roles' meta dependencies name it, or by its short name."""
    return ROLES / name.removeprefix(COLLECTION_NAME + ".")


def script(name: str) -> Path:
    """One of the lab's scripts (container-engine, lab-image)."""
    return LAB_FILES / name
