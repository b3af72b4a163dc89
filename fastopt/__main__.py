"""``python -m fastopt``: the ``fastopt`` command."""

import sys

from fastopt.cli import main

if __name__ == "__main__":
    sys.exit(main())
