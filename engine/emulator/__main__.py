"""`python -m engine.emulator`: run the emulator standalone."""

import sys

from engine.emulator._command import main

sys.exit(main())
