"""``python -m losslab ...``: the same as the ``losslab`` console script (and ``python -m losslab.cli``)."""

from losslab.cli.app import main

if __name__ == "__main__":
    main()
