"""`mailforge graph`: a picture of the cluster (DOT text, or SVG/PNG drawn by Graphviz)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import typer

from ..results import Result, Run
from .app import app
from .common import InventoryArg, JsonOption, command, emit, load, out


@app.command("graph")
@command("graph")
def graph(
    inventory: Path = InventoryArg,
    output: Path = typer.Option(
        None, "-o", "--output", help="Write the picture here: .svg or .png (drawn by Graphviz's dot) or .dot (the DOT text). Default: DOT text on stdout."
    ),
    as_json: bool = JsonOption,
):
    """Draw the cluster: balancers, relays (or an MX proxy's instances), cores and user networks, with ports,
    PROXY versions and who each firewall admits."""
    from .. import diagram, graphviz
    from ..write import write_atomically

    inv = load(inventory, recipients=False, quiet=as_json)
    text = diagram.dot(inv.topology)
    fmt = None
    if output is not None:
        fmt = graphviz.format_of(output)  # before drawing: a wrong name costs nothing
        write_atomically(output, graphviz.draw(text, fmt))
    boxes = diagram.boxes(inv.topology)
    run = Run(
        "graph",
        inv.topology.cluster,
        [Result(b.name, "drawn", "drawn", True, detail=b.role, data=asdict(b)) for b in boxes],
        warnings=inv.warnings,
        summary={"output": str(output) if output is not None else None, "format": fmt or "dot", "dot": text},
    )
    if as_json:
        emit(run)
    elif output is not None:
        out.print(f"wrote {output}: cluster {inv.topology.cluster}, {len(boxes)} hosts ({fmt})", markup=False)
    else:
        print(text, end="")
