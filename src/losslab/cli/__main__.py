"""``python -m losslab.cli ...``: the same as the ``losslab`` console script."""

from losslab.cli.app import main

main()
