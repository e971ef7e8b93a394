"""Probes that run on a host of the cluster or next to it: SMTP sessions, banners, PROXY greetings, streams.

`smtp_probe.py` is the script; it runs with the probing host's own python3 (stdlib only).
"""

from __future__ import annotations

import base64
import json
from importlib.resources import files

from ..errors import MailforgeError
from ..remote import HostShell

PROBE_TIMEOUT = 600  # seconds for one run of the probe script (it bounds every connection itself)


class ProbeError(MailforgeError):
    """The probe script could not run on its host, or answered nonsense."""


def run_probe(shell: HostShell, payload: dict) -> list[dict]:
    """Run smtp_probe.py with the probing host's own python3, `payload` as JSON on stdin; return its
    JSON answer. The script travels base64 in the command, so nothing is copied there."""
    script = files("mailforge.probes").joinpath("smtp_probe.py").read_text()
    code = base64.b64encode(script.encode()).decode()
    result = shell.run(f'python3 -c "$(echo {code} | base64 -d)"', stdin=json.dumps(payload).encode(), timeout=PROBE_TIMEOUT)
    if result.returncode != 0:
        raise ProbeError(f"probe on {shell.name} failed: {result.stderr.decode(errors='replace').strip()[-300:]}")
    try:
        answer = json.loads(result.stdout)
    except ValueError:
        raise ProbeError(f"probe on {shell.name} printed no JSON: {result.stdout.decode(errors='replace')[-300:]!r}") from None
    return answer
