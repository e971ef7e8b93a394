"""`mailforge render` and `mailforge schema`: the files of every host, and the inventory's JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from ..results import Result, Run
from .app import app
from .common import InventoryArg, JsonOption, command, emit, err, load, out, summary_line


@app.command()
@command("render")
def render(
    inventory: Path = InventoryArg,
    output: Path = typer.Option(..., "--output", "-o", help="Directory to write OUT/<host>/<path> and OUT/manifest.json into (replaced atomically)."),
    as_json: bool = JsonOption,
):
    """Render every file of every host; on any error the output directory is left untouched."""
    from ..render import render as render_tree
    from ..write import write_tree

    inv = load(inventory)
    manifest = write_tree(render_tree(inv), inv.topology.cluster, output)
    files = sum(len(h["files"]) for h in manifest["hosts"].values())
    if as_json:
        results = [Result(host, path, "rendered", True, data=entry) for host, h in manifest["hosts"].items() for path, entry in h["files"].items()]
        emit(
            Run("render", inv.topology.cluster, results, warnings=inv.warnings, hosts=list(manifest["hosts"]), summary={"output": str(output), "files": files})
        )
        return
    table = Table(title=f"Rendered {summary_line(inv)}", title_justify="left")
    table.add_column("host")
    table.add_column("files", justify="right")
    table.add_column("actions a change needs")
    for host, entry in manifest["hosts"].items():
        actions = sorted({f["action"] for f in entry["files"].values()})
        table.add_row(host, str(len(entry["files"])), ", ".join(actions))
    (err if as_json else out).print(table)
    out.print(f"wrote {files} files and manifest.json to {output}")


@app.command()
@command("schema")
def schema():
    """Print the inventory's JSON Schema, for editors that complete and check YAML."""
    from ..inventory import Topology

    print(json.dumps(Topology.model_json_schema(), indent=2, sort_keys=True))
