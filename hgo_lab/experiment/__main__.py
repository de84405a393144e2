"""``python -m hgo_lab.experiment``: the ``hgo-experiment`` command."""

import sys

from hgo_lab.experiment.cli import main

if __name__ == "__main__":  # not in a spawned pool process, which imports this as __mp_main__
    sys.exit(main())
