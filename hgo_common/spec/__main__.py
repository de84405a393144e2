"""``python -m hgo_common.spec``: the reference table of every run setting (docs/settings.md)."""

from __future__ import annotations

import sys

from .forms import markdown_table
from .run import Compute, Population, RunSpec

HEADER = """# Run settings

Generated from the declarations in `hgo_common/spec/run.py` by `python -m hgo_common.spec`
(tests/test_spec.py checks this file is up to date). The same names are the flags of
`hgo-server` and `hgo-run` (with dashes), the keys of the server's `--config` file and of
`format = 2` scenarios (dashes or underscores); `hgo-worker` takes the `Compute` settings.
Defaults shown are the core's; `hgo-run` changes a few (a 64-512-10 MLP, lr 1, 300 rounds,
tau 100 ms; its `--help` says so), and `q` defaults to every worker where there is a
population (simulator, `hgo-run`) and to 10 on a bare `hgo-server`.
"""


def render() -> str:
    return (
        HEADER
        + "\n## RunSpec: what the run is\n\n"
        + markdown_table(RunSpec)
        + "\n## Compute: how a device spends its round\n\n"
        + markdown_table(Compute)
        + "\n## Population: who takes part (simulator, hgo-run, hgo-experiment)\n\n"
        + markdown_table(Population, own_only=True)
    )


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
