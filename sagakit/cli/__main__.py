"""``python -m sagakit.cli``: the ``sagakit`` command, for environments without the script."""

from . import main

main(prog_name="sagakit")
