"""Loaded by pytest for every scenario's testinfra tests: their shared checks live in molecule/shared."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "shared"))
