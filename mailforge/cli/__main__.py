"""`python -m mailforge.cli`: the command line, as the playbook's rotation step calls it."""

from . import main

main()
