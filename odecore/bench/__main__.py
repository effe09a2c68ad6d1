"""``python -m odecore.bench``: the same as ``odecore bench``."""

import sys

from .cli import main

sys.exit(main())
