"""``python -m kernelpot`` runs the command line."""

import sys

from kernelpot.cli import main

sys.exit(main())
