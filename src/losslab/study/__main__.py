"""``python -m losslab.study run FILE ...``: the same commands as ``losslab study ...``."""

import sys

from losslab.cli.app import main

main(["study", *sys.argv[1:]])
