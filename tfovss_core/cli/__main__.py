"""``python -m tfovss_core.cli`` = ``tfovss``."""
import sys

from tfovss_core.cli import main

sys.exit(main())
