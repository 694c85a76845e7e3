"""``python -m bitttt_gui`` = ``bitttt-gui``."""

import sys

from .app import main

sys.exit(main())
