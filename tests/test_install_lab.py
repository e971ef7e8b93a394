"""The issue's whole path, as a mail admin takes it: mailforge installed from its wheel in a fresh
virtualenv, run from a directory outside the repository on a copy of the example, brings the
cluster up in the lab over SSH (a sudo user, the lab's own known_hosts) on the default Debian
release, and `verify --lab` passes every check. The session's `lab` fixture (conftest) does exactly
that once; every other lab test then uses the lab it made. Runs when MAILFORGE_LAB=1.
"""

from __future__ import annotations

import json
import os

import pytest
from conftest import LAB_UP, in_container, rows

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.environ.get("MAILFORGE_LAB") != "1", reason="lab tests run with MAILFORGE_LAB=1 (they start containers)"),
]


def test_the_installed_wheel_brings_the_example_up_over_ssh_and_verify_passes(lab):
    up, verify = LAB_UP["up"], LAB_UP["verify"]
    assert "sshd in every host and client: user mailforge with sudo" in up.stdout, up.stdout
    assert verify.returncode == 0, verify.stdout[-4000:] + verify.stderr[-2000:]
    checks = rows(json.loads(verify.stdout))
    assert len(checks) >= 40 and all(c["ok"] for c in checks), [c for c in checks if not c["ok"]]
    print(f"lab up {LAB_UP['up_seconds']:.0f} s, verify --lab {LAB_UP['verify_seconds']:.0f} s, {len(checks)} checks")
    # the hosts run the default release, and were reached as the admin user with sudo, never as root
    assert in_container("relay1", ". /etc/os-release; echo $VERSION_CODENAME").strip() == os.environ.get("MAILFORGE_LAB_RELEASE", "trixie")
    auth = in_container("core", "cat /var/log/auth.log")
    assert "Accepted publickey for mailforge" in auth and "for root from" not in auth
