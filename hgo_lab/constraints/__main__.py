"""``python -m hgo_lab.constraints``: the launcher, list, clean and check (:mod:`.cli`).

Constrained workers and a lab's reaper are started as ``python -m hgo_lab.constraints
exec|reaper ...``, so this entry point must keep that command line.
"""

import sys

from .cli import main

sys.exit(main())
