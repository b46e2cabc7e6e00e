"""The ``losslab`` command line: one module per command group, all thin layers over the Python API.

``app`` holds the root group and the entry point; ``options`` generates flags from typed configs.
"""

from losslab.cli.app import cli, main

__all__ = ["cli", "main"]
