"""``python -m hgo_lab.cluster``: hgo-run."""

import sys

from . import main

sys.exit(main())
