"""`python -m odecore` and the `odecore` console script (the command line is odecore.apps.cli)."""

import sys

from .apps.cli import main

if __name__ == "__main__":
    sys.exit(main())
