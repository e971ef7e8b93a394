"""`mailforge validate`: check an inventory without writing anything."""

from __future__ import annotations

from pathlib import Path

from ..results import Run
from .app import app
from .common import InventoryArg, JsonOption, command, emit, load, out, summary_line


@app.command()
@command("validate")
def validate(inventory: Path = InventoryArg, as_json: bool = JsonOption):
    """Check an inventory without writing anything: every problem at once, exit 2 if any."""
    from ..inventory import resolve_topology_file

    inv = load(inventory, quiet=as_json)
    if as_json:
        emit(Run("validate", inv.topology.cluster, warnings=inv.warnings, hosts=inv.names, summary={"inventory": str(resolve_topology_file(inventory))}))
        return
    out.print(f"[green]valid:[/green] {resolve_topology_file(inventory)} ({summary_line(inv)})")
