"""mailforge: Postfix relay/core mail clusters from one topology inventory."""

__version__ = "0.1.0"
