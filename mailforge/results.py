"""One result shape for every command, rolled up per host (as Nornir does), and one JSON envelope.

A command's rows (a drift item, a verify check, a DNS check, a map change, a deploy recap) each become
a `Result`: the host (or, for DNS, the domain, host name or list zone) it is about, what was checked or
done, its status in the command's words, whether it is ok, whether it changed something, a one-line
detail, and the command's own fields in `data`. `Run` collects them with any problems in the input,
and `envelope()` is what `--json` prints, the same for every command:

    {"command": "drift", "cluster": "example", "status": "ok" | "problem" | "error", "exit_code": 0,
     "hosts": {"relay1": {"ok": true, "changed": false, "results": [{...}, ...]}, ...},
     "problems": [{"file": ..., "line": ..., "column": ..., "key": ..., "message": ..., "expected": ...}],
     "warnings": [...], "summary": {...}}

`status` is "ok" (exit 0), "problem" (exit 1: something found on the cluster: drift, a failed check,
a refused or failed push) or "error" (exit 2: could not run: bad input, an unreachable host).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import Problem

OK, PROBLEM, ERROR = "ok", "problem", "error"
EXIT_CODES = {OK: 0, PROBLEM: 1, ERROR: 2}


@dataclass
class Result:
    host: str
    name: str
    status: str
    ok: bool
    changed: bool = False
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Run:
    command: str
    cluster: str | None = None
    results: list[Result] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # could not run, for a reason that is not a located problem
    hosts: list[str] | None = None  # every host the command covered, in order (some may have no row)

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.results if not r.ok]

    @property
    def failed_hosts(self) -> list[str]:
        return list(dict.fromkeys(r.host for r in self.failed))

    @property
    def status(self) -> str:
        if self.problems or self.error:
            return ERROR
        return PROBLEM if self.failed else OK

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def by_host(self) -> dict[str, dict[str, Any]]:
        hosts: dict[str, dict[str, Any]] = {h: {"ok": True, "changed": False, "results": []} for h in self.hosts or []}
        for r in self.results:
            entry = hosts.setdefault(r.host, {"ok": True, "changed": False, "results": []})
            entry["ok"] = entry["ok"] and r.ok
            entry["changed"] = entry["changed"] or r.changed
            entry["results"].append(asdict(r))
        return hosts

    def envelope(self) -> dict[str, Any]:
        envelope: dict[str, Any] = {
            "command": self.command,
            "cluster": self.cluster,
            "status": self.status,
            "exit_code": self.exit_code,
            "hosts": self.by_host(),
            "problems": [asdict(p) | {"file": str(p.file)} for p in self.problems],
            "warnings": [asdict(p) | {"file": str(p.file)} for p in self.warnings],
            "summary": self.summary,
        }
        if self.error:
            envelope["error"] = self.error
        return envelope
