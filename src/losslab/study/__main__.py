"""``python -m losslab.study run FILE ...``: the same as ``python -m losslab study run FILE ...``.

The study package does not import the command line (the CLI sits above every library package); this entry point
runs the top-level one, :mod:`losslab.__main__`, with ``study`` in front of the arguments.
"""

import runpy
import sys

sys.argv = [sys.argv[0], "study", *sys.argv[1:]]
runpy.run_module("losslab", run_name="__main__", alter_sys=True)
