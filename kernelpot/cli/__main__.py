"""``python -m kernelpot.cli`` runs the command line (as ``python -m kernelpot`` does)."""

import sys

from kernelpot.cli import main

sys.exit(main())
