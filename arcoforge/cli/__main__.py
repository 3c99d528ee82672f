"""``python -m arcoforge.cli``: the command line, as the ``arcoforge`` script runs it."""

from arcoforge.cli.main import main

main()
