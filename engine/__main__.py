"""`python -m engine` runs the `nanoedit` command."""

import sys

from engine.cli import main

sys.exit(main())
