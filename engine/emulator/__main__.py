"""`python -m engine.emulator`: run the emulator standalone."""

import sys

from engine.cli.emulator import main

sys.exit(main())
