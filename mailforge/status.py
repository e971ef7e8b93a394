"""What a running cluster is doing now: each Postfix instance's queues, each balancer's view of the relays.

One round trip per host, the hosts in parallel: a Postfix host runs one shell script that prints its
clock, then for each instance whether it runs (`postfix -c DIR status`) and its queue as
`postqueue -c DIR -j` lists it (one JSON object per message; Postfix 3.1 and later); a balancer is
asked `show stat` and `show servers state` on HAProxy's admin socket (`rotation.servers`). Everything else is pure: the
listing becomes per-queue counts, the age of each queue's oldest message (against the host's own
clock, so a skewed controller clock cannot age mail) and the most frequent deferral reasons, and
`judge` names what is wrong:

- a Postfix instance that does not run;
- a message older than `max_age` in maildrop, incoming, active or deferred (held mail is held on
  purpose: it is counted, never aged);
- a relay that a balancer does not send mail to (down, drained, in maintenance, or not in its
  backend), or a balancer whose HAProxy does not answer.

A host that cannot be reached is reported as such, with the others' state still shown.
"""

from __future__ import annotations

import json
import re
import shlex
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .errors import MailforgeError
from .inventory import Inventory, Role
from .remote import HostShell, HostUnreachable
from .results import Result, Run
from .rotation import RotationError, ServerState, servers

QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")
AGED = ("maildrop", "incoming", "active", "deferred")  # hold is left out of --max-age: held on purpose
TOP_REASONS = 3
MARK = "@@mailforge-status@@"
WORKERS = 16
_ADDRESS = re.compile(r"<[^<>\s]*@[^<>\s]*>")


class StatusError(MailforgeError):
    """A host's answer could not be read (not: the host is in a bad state)."""


# --- the pure core: postqueue -j to counts, ages and reasons ----------------------------------------


@dataclass
class Queue:
    """One Postfix instance's queue, summed up."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(QUEUES, 0))
    oldest: dict[str, int] = field(default_factory=dict)  # queue -> age in seconds of its oldest message
    reasons: list[tuple[str, int]] = field(default_factory=list)  # deferral reason, messages; most frequent first

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def oldest_aged(self) -> tuple[str, int] | None:
        """(queue, age) of the oldest message that --max-age applies to, or None."""
        aged = [(q, a) for q, a in self.oldest.items() if q in AGED]
        return max(aged, key=lambda qa: qa[1]) if aged else None


def parse_postqueue(text: str) -> tuple[list[dict], list[str]]:
    """`postqueue -j` output (stderr mixed in) to (the messages, Postfix's own lines such as
    "postqueue: warning: Mail system is down -- accessing queue directly")."""
    messages, said = [], []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("{"):
            try:
                message = json.loads(line)
            except ValueError as exc:
                raise StatusError(f"postqueue -j printed a line that is not JSON ({exc}): {line[:200]}") from None
            if not isinstance(message, dict) or "queue_name" not in message:
                raise StatusError(f"postqueue -j printed an object without queue_name: {line[:200]}")
            messages.append(message)
        else:
            said.append(line.strip())
    return messages, said


def reason_of(text: str) -> str:
    """A deferral reason with the addresses in angle brackets folded, so one cause counts once
    however many recipients it hit: `<alice@example.com>: Recipient address rejected` -> `<…>: ...`."""
    return _ADDRESS.sub("<…>", " ".join(text.split()))


def summarize(messages: list[dict], now: int, top: int = TOP_REASONS) -> Queue:
    """Counts per queue, each queue's oldest message's age (from `now`, the host's clock), and the
    `top` deferral reasons by the number of messages that carry them."""
    queue = Queue()
    reasons: Counter[str] = Counter()
    for m in messages:
        name = str(m.get("queue_name"))
        queue.counts[name] = queue.counts.get(name, 0) + 1
        arrival = m.get("arrival_time")
        if isinstance(arrival, int | float):
            age = max(0, int(now - arrival))
            queue.oldest[name] = max(queue.oldest.get(name, 0), age)
        if name == "deferred":
            reasons.update({reason_of(r["delay_reason"]) for r in m.get("recipients") or [] if isinstance(r, dict) and r.get("delay_reason")})
    queue.reasons = sorted(reasons.items(), key=lambda rc: (-rc[1], rc[0]))[:top]
    return queue


# --- what each host said ----------------------------------------------------------------------------


@dataclass
class Instance:
    """One Postfix instance of a host: its config directory, whether it runs, its queue."""

    directory: str
    running: bool
    queue: Queue = field(default_factory=Queue)
    said: list[str] = field(default_factory=list)  # postqueue's own lines (warnings)
    error: str | None = None  # the queue could not be listed


@dataclass
class HostStatus:
    name: str
    role: str
    unreachable: str | None = None  # why the host could not be reached
    instances: list[Instance] = field(default_factory=list)
    servers: dict[str, ServerState] | None = None  # a balancer's view of its relays
    balancer_error: str | None = None  # a balancer whose HAProxy did not answer


def survey_script(directories: list[str]) -> str:
    """The one shell script a Postfix host runs: its clock, then per instance `running` and the queue."""
    lines = [f'echo "{MARK} now $(date +%s)"']
    for d in directories:
        q = shlex.quote(d)
        lines += [
            f"echo '{MARK} instance '{q}",
            f"if postfix -c {q} status >/dev/null 2>&1; then echo '{MARK} running yes'; else echo '{MARK} running no'; fi",
            f"postqueue -c {q} -j 2>&1",
            f'echo "{MARK} postqueue-exit $?"',
        ]
    return "\n".join(lines) + "\n"


def parse_survey(name: str, role: str, text: str) -> HostStatus:
    """The survey script's output to the host's status (pure: the unit tests feed it captured output)."""
    host = HostStatus(name, role)
    now: int | None = None
    current: Instance | None = None
    body: list[str] = []

    def close() -> None:
        if current is None:
            return
        if now is None:
            raise StatusError(f"{name}: the status script's answer has no clock line")
        messages, said = parse_postqueue("\n".join(body))
        current.queue, current.said = summarize(messages, now), said

    for line in text.splitlines():
        if not line.startswith(MARK + " "):
            body.append(line)
            continue
        word, _, value = line[len(MARK) + 1 :].partition(" ")
        if word == "now":
            now = int(value)
        elif word == "instance":
            close()
            current, body = Instance(value, running=False), []
            host.instances.append(current)
        elif word == "running" and current is not None:
            current.running = value == "yes"
        elif word == "postqueue-exit" and current is not None:
            if value != "0":
                fatal = [line for line in body if "fatal" in line] or body[-1:] or [f"exit {value}"]
                current.error = f"postqueue -c {current.directory} -j failed: {fatal[-1].strip()}"
                body = []
            close()
            current, body = None, []
    if current is not None:  # the answer stopped within an instance
        raise StatusError(f"{name}: the status script's answer stops within {current.directory}")
    return host


def survey(inventory: Inventory, shells: dict[str, HostShell], hosts: list[str], timeout: float = 30, workers: int = WORKERS) -> list[HostStatus]:
    """Ask every host in `hosts` at once, one round trip each; a host that cannot be reached is
    returned as such, never raised, so the others are still reported."""
    by_name = {h.name: h for h in inventory.hosts}

    def ask(name: str) -> HostStatus:
        host = by_name[name]
        shell = shells[name]
        try:
            if host.role is Role.BALANCER:
                status = HostStatus(name, host.role.value)
                try:
                    status.servers = servers(shell)
                except RotationError as exc:
                    status.balancer_error = str(exc)
                return status
            result = shell.run(survey_script(host.instances), timeout=timeout)
        except HostUnreachable as exc:
            return HostStatus(name, host.role.value, unreachable=str(exc))
        text = result.stdout.decode(errors="replace")
        if MARK not in text:
            return HostStatus(name, host.role.value, unreachable=f"{name}: the status script failed: {result.stderr.decode(errors='replace').strip()[-300:]}")
        return parse_survey(name, host.role.value, text)

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(hosts)))) as pool:
        return list(pool.map(ask, hosts))


# --- judging: what is wrong, and the envelope ------------------------------------------------------


def age_text(seconds: int) -> str:
    """An age as a mail admin reads it: 45s, 12m 5s, 1h, 3h 2m, 2d 4h."""
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        big, small = f"{seconds // 60}m", seconds % 60 and f"{seconds % 60}s"
    elif seconds < 86400:
        big, small = f"{seconds // 3600}h", seconds % 3600 // 60 and f"{seconds % 3600 // 60}m"
    else:
        big, small = f"{seconds // 86400}d", seconds % 86400 // 3600 and f"{seconds % 86400 // 3600}h"
    return f"{big} {small}" if small else big


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str) -> int:
    """A duration in Postfix's time units (`0`, `90s`, `30m`, `1h`, `2d`, `1w`; a bare number is
    seconds) to seconds."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", text)
    if not match:
        raise StatusError(f"--max-age {text!r}: expected a number with an optional unit s, m, h, d or w (e.g. 30m, 1h)")
    return int(match.group(1)) * _UNITS[match.group(2) or "s"]


def instance_problems(i: Instance, max_age: int | None) -> list[str]:
    problems = []
    if not i.running:
        problems.append(f"postfix not running ({i.directory})")
    if i.error:
        problems.append(i.error)
    oldest = i.queue.oldest_aged()
    if max_age is not None and oldest is not None and oldest[1] > max_age:
        problems.append(f"oldest message in {oldest[0]} ({i.directory}) is {age_text(oldest[1])} old, over --max-age {age_text(max_age)}")
    return problems


def relay_problems(inventory: Inventory, host: HostStatus) -> list[str]:
    if host.balancer_error:
        return [host.balancer_error]
    problems = []
    for relay in inventory.topology.relays:
        state = (host.servers or {}).get(relay.name)
        if state is None:
            problems.append(f"{relay.name} is not in {host.name}'s backend")
        elif not state.in_rotation:
            said = state.status.split()[0].lower() if state.status else ""
            why = state.status if said == state.state else f"{state.state} (HAProxy: {state.status or 'no status'})"  # drained while its checks fail: DOWN
            problems.append(f"{relay.name} is out of rotation on {host.name}: {why}")
    return problems


def problems_of(inventory: Inventory, statuses: list[HostStatus], max_age: int | None) -> list[str]:
    """Everything wrong, in the hosts' order, one line each: what makes status exit non-zero."""
    problems: list[str] = []
    for h in statuses:
        if h.unreachable:
            problems.append(h.unreachable)
            continue
        for i in h.instances:
            problems += [f"{h.name}: {p}" for p in instance_problems(i, max_age)]
        if h.role == Role.BALANCER.value:
            problems += relay_problems(inventory, h)
    return problems


def instance_detail(i: Instance) -> str:
    q = i.queue
    parts = [", ".join(f"{name} {q.counts.get(name, 0)}" for name in QUEUES if name != "maildrop" or q.counts.get(name))]
    if q.oldest.get("deferred") is not None:
        parts.append(f"oldest deferred {age_text(q.oldest['deferred'])}")
    if q.reasons:
        parts.append("; ".join(f"{reason} ({n})" for reason, n in q.reasons))
    return "; ".join(parts)


def results_of(inventory: Inventory, statuses: list[HostStatus], max_age: int | None, warnings: list | None = None) -> Run:
    """The statuses as mailforge's envelope: a row per instance, per relay a balancer sees, per host
    that could not be reached (which makes the run an error: exit 2)."""
    results: list[Result] = []
    unreachable = []
    for h in statuses:
        if h.unreachable:
            unreachable.append(h.unreachable)
            results.append(Result(h.name, "reachable", "unreachable", False, detail=h.unreachable, data={"role": h.role}))
            continue
        for i in h.instances:
            problems = instance_problems(i, max_age)
            q = i.queue
            oldest = q.oldest_aged()
            results.append(
                Result(
                    h.name,
                    f"postfix ({i.directory})",
                    "running" if i.running else "stopped",
                    not problems,
                    detail="; ".join(problems) or instance_detail(i),
                    data={
                        "role": h.role,
                        "instance": i.directory,
                        "running": i.running,
                        "queues": dict(q.counts),
                        "oldest_seconds": dict(q.oldest),
                        "oldest_deferred_seconds": q.oldest.get("deferred"),
                        "too_old": bool(max_age is not None and oldest is not None and oldest[1] > max_age),
                        "reasons": [{"reason": r, "messages": n} for r, n in q.reasons],
                        "postqueue_said": i.said,
                        "error": i.error,
                        "problems": problems,
                    },
                )
            )
        if h.role == Role.BALANCER.value:
            if h.balancer_error:
                results.append(Result(h.name, "haproxy", "not answering", False, detail=h.balancer_error, data={"role": h.role}))
                continue
            for relay in inventory.topology.relays:
                state = (h.servers or {}).get(relay.name)
                data: dict = {"role": h.role, "relay": relay.name}
                if state is None:
                    results.append(Result(h.name, f"relay {relay.name}", "absent", False, detail=f"{relay.name} is not in {h.name}'s backend", data=data))
                    continue
                data |= {"state": state.state, "sessions": state.sessions, "check": state.check, "haproxy_status": state.status, "healthy": state.healthy}
                detail = f"{state.sessions} session{'s' if state.sessions != 1 else ''}, last check {state.check or 'none'}"
                results.append(Result(h.name, f"relay {relay.name}", state.state, state.in_rotation, detail=detail, data=data))
    totals = dict.fromkeys(QUEUES, 0)
    for h in statuses:
        for i in h.instances:
            for name, n in i.queue.counts.items():
                totals[name] = totals.get(name, 0) + n
    run = Run(
        "status",
        inventory.topology.cluster,
        results,
        warnings=list(warnings or []),
        hosts=[h.name for h in statuses],
        summary={
            "max_age_seconds": max_age,
            "queued": totals,
            "problems": problems_of(inventory, statuses, max_age),
            "unreachable": [h.name for h in statuses if h.unreachable],
        },
    )
    if unreachable:
        run.error = "; ".join(unreachable)
    return run
