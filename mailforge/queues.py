"""Acting on Postfix queues across a cluster: flush, hold, release, delete, and saying what was acted on.

Each host runs one shell script: per Postfix instance, the queue as `postqueue -j` lists it, the
action (`postqueue -f` or `-i ID`, `postsuper -h`, `-H`, `-d`), for a flush optionally a bounded wait
for the flushed messages to leave, and the queue listed again. What was acted on comes from the two
listings (which messages moved or left) and postsuper's own count; the action itself is Postfix's.

Nothing is acted on without a named target: queue ids, or `all` (for a delete also `confirmed`);
a flush without ids flushes everything, as `postqueue -f` does, which only asks for delivery now.
"""

from __future__ import annotations

import re
import shlex
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .errors import MailforgeError
from .inventory import Inventory
from .remote import HostShell, HostUnreachable
from .results import Result, Run
from .status import QUEUES, StatusError, parse_postqueue

VERBS = ("flush", "hold", "release", "delete")
POSTSUPER_QUEUES = ("incoming", "active", "deferred", "hold")  # the queues postsuper's ALL QUEUE takes (not maildrop)
QUEUE_ID = re.compile(r"[0-9A-Za-z]{6,32}")  # short (hex) and long (base 52) Postfix queue ids
MARK = "@@mailforge-queue@@"
WAIT_LIMIT = 600
WORKERS = 16
_SAID_COUNT = re.compile(r"postsuper: (?:Deleted|Placed on hold|Released from hold|Requeued): (\d+) messages?")


class QueueError(MailforgeError):
    """A queue action asked for something unsafe or impossible (bad ids, no target, a delete not confirmed)."""


@dataclass(frozen=True)
class Action:
    """What to do to which messages. `queue` narrows `all` to one queue, as postsuper's `ALL deferred`."""

    verb: str
    ids: tuple[str, ...] = ()
    all: bool = False
    queue: str | None = None
    wait: int = 0  # flush: seconds to wait, at most, for the flushed messages to leave the queue
    confirmed: bool = False  # delete --all: --yes

    def check(self) -> None:
        """Refuse, before any host is asked, what could act on more than was meant."""
        if self.verb not in VERBS:
            raise QueueError(f"unknown queue action {self.verb!r}; expected one of {', '.join(VERBS)}")
        bad = [i for i in self.ids if not QUEUE_ID.fullmatch(i) or i.upper() == "ALL"]  # postsuper reads ALL as every message
        if bad:
            raise QueueError(
                f"not a Postfix queue id: {', '.join(repr(b) for b in bad)} (expected what `mailforge status --json` or mailq shows, e.g. 4Ls0Jq1DxHz6tnq)"
            )
        if self.ids and self.all:
            raise QueueError("name queue ids or give --all, not both")
        if self.verb != "flush" and not self.ids and not self.all:
            raise QueueError(f"{self.verb}: name the messages: queue ids, or --all for every message")
        if self.verb == "delete" and self.all and not self.confirmed:
            raise QueueError("delete --all removes every message it matches, for good: add --yes to confirm (or name queue ids)")
        if self.queue is not None:
            if self.verb not in ("hold", "delete") or not self.all:
                raise QueueError("--queue narrows --all, for hold and delete only")
            if self.queue not in POSTSUPER_QUEUES:
                raise QueueError(f"--queue {self.queue!r}: expected one of {', '.join(POSTSUPER_QUEUES)}")
        if self.wait and self.verb != "flush":
            raise QueueError("--wait is for flush: it waits for the flushed messages to be delivered")
        if not 0 <= self.wait <= WAIT_LIMIT:
            raise QueueError(f"--wait {self.wait}: at most {WAIT_LIMIT} seconds")

    def commands(self, directory: str) -> list[str]:
        """The Postfix commands that do it for one instance."""
        d = shlex.quote(directory)
        if self.verb == "flush":
            return [f"postqueue -c {d} -i {i}" for i in self.ids] or [f"postqueue -c {d} -f"]
        option = {"hold": "-h", "release": "-H", "delete": "-d"}[self.verb]
        if self.ids:
            return [f"postsuper -c {d} " + " ".join(f"{option} {i}" for i in self.ids)]
        return [f"postsuper -c {d} {option} ALL" + (f" {self.queue}" if self.queue else "")]


def script(action: Action, directories: list[str]) -> str:
    """The one shell script a host runs: per instance, the listing before, the action, the listing after.
    A flush with a wait then waits, at most `wait` seconds, while any message it flushed (every deferred
    one, or the ids named) is still queued."""
    lines = []
    for directory in directories:
        d = shlex.quote(directory)
        lines += [
            f"echo '{MARK} instance '{d}",
            f"echo '{MARK} before'",
            f"before=$(postqueue -c {d} -j 2>&1); rc=$?",
            "printf '%s\\n' \"$before\"",
            f'echo "{MARK} exit $rc"',
            f"echo '{MARK} action'",
            "{",
            *(f"  {c}" for c in action.commands(directory)),
            "} 2>&1",
            f'echo "{MARK} exit $?"',
        ]
        if action.verb == "flush" and action.wait:
            if action.ids:
                lines.append(f"wanted={shlex.quote('|'.join(action.ids))}")
            else:
                lines.append(
                    """wanted=$(printf '%s\\n' "$before" | sed -n 's/^{"queue_name": "deferred", "queue_id": "\\([0-9A-Za-z]*\\)".*/\\1/p' | paste -sd'|')"""
                )
            lines += [
                "n=0",
                f'while [ -n "$wanted" ] && [ $n -lt {action.wait} ] && postqueue -c {d} -j 2>/dev/null | grep -qE "\\"queue_id\\": \\"($wanted)\\""; do sleep 1; n=$((n+1)); done',
                f'echo "{MARK} waited $n"',
            ]
        lines += [f"echo '{MARK} after'", f"postqueue -c {d} -j 2>&1", f'echo "{MARK} exit $?"']
    return "\n".join(lines) + "\n"


@dataclass
class Acted:
    """What one action did on one Postfix instance of one host."""

    host: str
    directory: str
    verb: str
    before: dict[str, int] = field(default_factory=dict)  # messages per queue before
    after: dict[str, int] = field(default_factory=dict)  # and after
    ids: list[str] = field(default_factory=list)  # the messages acted on, by queue id
    count: int = 0  # how many: postsuper's own count, or for a flush the messages flushed
    delivered: list[str] = field(default_factory=list)  # flush: the flushed messages no longer queued afterwards
    waited: int | None = None  # flush --wait: seconds waited
    found: list[str] = field(default_factory=list)  # the queue ids named that were queued here before
    said: list[str] = field(default_factory=list)  # Postfix's own lines
    error: str | None = None


def _counts(messages: list[dict]) -> dict[str, int]:
    counts = dict.fromkeys(QUEUES, 0)
    for m in messages:
        counts[str(m["queue_name"])] = counts.get(str(m["queue_name"]), 0) + 1
    return counts


def parse_answer(host: str, action: Action, text: str) -> list[Acted]:
    """The script's output to what was done on each instance (pure: the unit tests feed it captured output)."""
    done: list[Acted] = []
    section: str | None = None
    body: dict[str, list[str]] = {}
    current: Acted | None = None
    exits: dict[str, str] = {}

    def finish(a: Acted) -> None:
        failed = {part: code for part, code in exits.items() if code != "0"}
        if failed:
            part, code = next(iter(failed.items()))
            lines = [line.strip() for line in body.get(part, []) if line.strip()]
            what = action.verb if part == "action" else "postqueue -j"
            a.error = f"{what} on {a.directory} failed (exit {code})" + (f": {lines[-1]}" if lines else "")
        try:
            before, said_before = parse_postqueue("\n".join(body.get("before", [])))
            after, said_after = parse_postqueue("\n".join(body.get("after", [])))
        except StatusError as exc:
            a.error = a.error or f"{a.directory}: {exc}"
            return
        a.before, a.after = _counts(before), _counts(after)
        a.said = list(dict.fromkeys([line.strip() for line in body.get("action", []) if line.strip()] + said_before + said_after))
        where = {str(m["queue_id"]): str(m["queue_name"]) for m in before}
        now = {str(m["queue_id"]): str(m["queue_name"]) for m in after}
        named = set(action.ids)
        a.found = [i for i in action.ids if i in where]
        if action.verb == "flush":
            a.ids = [i for i, q in where.items() if (i in named if named else q == "deferred")]
            a.count = len(a.ids)
            a.delivered = [i for i in a.ids if i not in now]
        else:
            if action.verb == "hold":
                a.ids = [i for i, q in now.items() if q == "hold" and where.get(i) != "hold"]
            elif action.verb == "release":
                a.ids = [i for i, q in where.items() if q == "hold" and now.get(i, "") != "hold"]
            else:
                a.ids = [i for i, q in where.items() if i not in now and (i in named if named else action.queue in (None, q))]
            counted = [int(m.group(1)) for m in map(_SAID_COUNT.search, a.said) if m]
            a.count = counted[-1] if counted else len(a.ids)

    for line in text.splitlines():
        if not line.startswith(MARK + " "):
            if section is not None:
                body.setdefault(section, []).append(line)
            continue
        word, _, value = line[len(MARK) + 1 :].partition(" ")
        if word == "instance":
            if current is not None:
                finish(current)
            current = Acted(host, value, action.verb)
            done.append(current)
            section, body, exits = None, {}, {}
        elif word in ("before", "action", "after"):
            section = word
        elif word == "exit" and section is not None:
            exits[section] = value
        elif word == "waited" and current is not None:
            current.waited = int(value)
    if current is not None:
        if "after" not in exits:
            current.error = current.error or f"{host}: the queue script's answer stops within {current.directory}"
        finish(current)
    return done


def act(
    inventory: Inventory, shells: dict[str, HostShell], hosts: list[str], action: Action, instance: str | None = None, workers: int = WORKERS
) -> list[Acted]:
    """Do `action` on every Postfix instance (or only `instance`, a config directory) of `hosts`, the
    hosts at once; a host that stops answering gives a row with its error."""
    action.check()
    by_name = {h.name: h for h in inventory.hosts}
    targets = {n: [d for d in by_name[n].instances if instance in (None, d)] for n in hosts}
    targets = {n: dirs for n, dirs in targets.items() if dirs}
    if not targets:
        known = sorted({d for n in hosts for d in by_name[n].instances})
        raise QueueError(
            f"no Postfix instance {instance} on {', '.join(hosts)}" + (f" (they have {', '.join(known)})" if known else " (they run no Postfix)")
            if instance
            else f"{', '.join(hosts)} run{'s' if len(hosts) == 1 else ''} no Postfix: choose relays or cores with --limit"
        )

    def on(name: str) -> list[Acted]:
        timeout = 120 + action.wait * len(targets[name])
        try:
            result = shells[name].run(script(action, targets[name]), timeout=timeout)
        except HostUnreachable as exc:
            return [Acted(name, d, action.verb, error=str(exc)) for d in targets[name]]
        done = parse_answer(name, action, result.stdout.decode(errors="replace"))
        if not done:
            return [
                Acted(name, d, action.verb, error=f"{name}: the queue script failed: {result.stderr.decode(errors='replace').strip()[-300:]}")
                for d in targets[name]
            ]
        return done

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(targets)))) as pool:
        return [a for acted in pool.map(on, list(targets)) for a in acted]


PAST = {"flush": "flushed", "hold": "held", "release": "released", "delete": "deleted"}


def describe(a: Acted) -> str:
    """One line a mail admin reads: what was done and how the queues changed."""
    if a.error:
        return a.error
    changed = [q for q in QUEUES if a.before.get(q, 0) != a.after.get(q, 0)]
    shown = changed or [q for q in QUEUES if a.before.get(q)] or ["deferred"]
    moves = ", ".join(f"{q} {a.before.get(q, 0)} -> {a.after.get(q, 0)}" for q in shown)
    text = f"{PAST[a.verb]} {a.count} message{'s' if a.count != 1 else ''}"
    if a.verb == "flush" and a.count:
        text += f", {len(a.delivered)} of them no longer queued" + (f" after {a.waited} s" if a.waited is not None else " (delivery goes on; --wait N waits)")
    return f"{text}; {moves}"


def results_of(inventory: Inventory, action: Action, acted: list[Acted], hosts: list[str], warnings: list | None = None) -> Run:
    """One row per instance acted on; a named queue id found on no instance is a row of its own (exit 1)."""
    results = [
        Result(
            a.host,
            f"{a.verb} ({a.directory})",
            "failed" if a.error else PAST[a.verb],
            a.error is None,
            changed=bool(a.count) and a.verb != "flush" or bool(a.delivered),
            detail=describe(a),
            data={
                "instance": a.directory,
                "before": a.before,
                "after": a.after,
                "ids": a.ids,
                "count": a.count,
                "delivered": a.delivered,
                "waited": a.waited,
                "said": a.said,
            },
        )
        for a in acted
    ]
    seen = {i for a in acted for i in a.found}
    missing = [i for i in action.ids if i not in seen] if not any(a.error for a in acted) else []
    for i in missing:
        results.append(Result(i, action.verb, "not found", False, detail=f"queue id {i} is in no queue of {', '.join(hosts)}"))
    run = Run(
        f"queue {action.verb}",
        inventory.topology.cluster,
        results,
        warnings=list(warnings or []),
        hosts=hosts,
        summary={"action": action.verb, "count": sum(a.count for a in acted), "ids": [i for a in acted for i in a.ids], "not_found": missing},
    )
    errors = [a.error for a in acted if a.error]
    if errors:
        run.error = "; ".join(errors)
    return run
