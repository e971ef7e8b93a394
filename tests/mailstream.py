"""A bounded stream of real messages through a lab cluster's front door, and where each one ended up.

`MailStream(inventory).start(count, rate)` sends `count` messages, `rate` a second, one SMTP
connection each, from the lab's client container (the probe script's `stream` kind), in a thread,
so a test can break or change hosts meanwhile; `wait()` returns the outcome: how many were sent,
accepted (250 after DATA), refused or failed, and delivered (found in a core's Maildir).
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from mailforge import lab as lab_module
from mailforge.inventory import load_inventory
from mailforge.probes import run_probe
from mailforge.verify import SENDER, _front_door, _listed_recipient


@dataclass
class StreamOutcome:
    sent: int
    accepted: list[str]  # tokens
    not_accepted: dict[str, str]  # token -> what the client saw
    delivered: set[str] = field(default_factory=set)
    seconds: dict[str, float] = field(default_factory=dict)  # token -> how long its SMTP session took, at the client
    last_delivery_seconds: float | None = None  # from the call to `delivered_within` to the last arrival

    @property
    def lost(self) -> list[str]:
        return sorted(set(self.accepted) - self.delivered)

    def summary(self) -> str:
        return f"sent {self.sent}, accepted {len(self.accepted)}, delivered {len(self.delivered)}" + (
            f"; not accepted: {dict(list(self.not_accepted.items())[:5])}" if self.not_accepted else ""
        )


class MailStream:
    def __init__(self, inventory_dir: Path, front_door: tuple[str, int] | None = None):
        self.inventory = load_inventory(inventory_dir)
        self.client = lab_module.probes(self.inventory)["client"].shell()
        self.cores = {
            name: reach.shell() for name, reach in lab_module.reaches(self.inventory).items() if name in {c.name for c in self.inventory.topology.cores}
        }
        # the lab's front door: a managed balancer, or the stand-in of an external one
        self.host, self.port = front_door or _front_door(self.inventory, lab_module.front_door(self.inventory))
        local, self.domain = _listed_recipient(self.inventory)
        self.recipient = f"{local}@{self.domain}"
        self.token = "s" + uuid.uuid4().hex[:10]
        self._answer: list[dict] | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self, count: int, rate: float, timeout: int = 120, hold: float = 0) -> MailStream:
        """Send in the background; `hold`: seconds each session waits before DATA (a slow sender)."""
        probe = {
            "kind": "stream",
            "count": count,
            "rate": rate,
            "token": self.token,
            "host": self.host,
            "port": self.port,
            "sender": SENDER,
            "recipient": self.recipient,
            "helo": "client.lab-sender.test",
            "timeout": timeout,
            "hold": hold,
        }

        def run() -> None:
            try:
                self._answer = run_probe(self.client, {"probes": [probe]})[0]
            except BaseException as exc:  # noqa: BLE001 - handed to wait()
                self._error = exc

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def wait(self, deliver_within: int = 120) -> StreamOutcome:
        """The stream's outcome once every message has had its answer, with the deliveries seen
        within `deliver_within` seconds from now."""
        assert self._thread is not None
        self._thread.join(1800)
        if self._error is not None:
            raise self._error
        assert self._answer is not None, "the stream did not finish"
        accepted = [r["token"] for r in self._answer if (r["stages"].get("data") or [0])[0] == 250]
        refused = {
            r["token"]: ", ".join(f"{k} {v[0]} {v[1][:60]}" for k, v in r["stages"].items() if k != "ehlo") for r in self._answer if r["token"] not in accepted
        }
        outcome = StreamOutcome(len(self._answer), accepted, refused, seconds={r["token"]: r.get("seconds", 0.0) for r in self._answer})
        return self.delivered_within(outcome, deliver_within)

    def delivered_within(self, outcome: StreamOutcome, seconds: int) -> StreamOutcome:
        """Look into every core's Maildir until every accepted message is there or `seconds` pass."""
        started = time.monotonic()
        deadline = started + seconds
        while True:
            found: set[str] = set()
            for shell in self.cores.values():
                result = shell.run(f"grep -rhoE '{self.token}-[0-9]{{4}}' /var/mail/vhosts/{self.domain}/ 2>/dev/null | sort -u")
                found |= set(result.stdout.decode().split())
            if found - outcome.delivered:
                outcome.last_delivery_seconds = round(time.monotonic() - started, 1)
            outcome.delivered = found
            if set(outcome.accepted) <= found or time.monotonic() >= deadline:
                return outcome
            time.sleep(2)
