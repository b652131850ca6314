"""The command line's rooms, one module per group of commands: plain functions with Typer-annotated parameters.

``cli.py`` (the ``todsynth`` console script and ``python -m cli``) creates the Typer apps and registers these
functions on them in the order ``--help`` lists them. The rooms import :mod:`bench.cli.common` (consoles, the
one-line error exit) and, inside the commands, the harness or the library; never ``cli`` nor each other.
"""
