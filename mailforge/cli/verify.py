"""`mailforge verify`: placeholder until the verify rework lands."""
