"""``python -m hgo_lab.experiment``: the ``hgo-experiment`` command."""

import sys

from hgo_lab.experiment.cli import main

sys.exit(main())
