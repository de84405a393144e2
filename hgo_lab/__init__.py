"""The lab: tools above the server and the worker, for experiments on one machine.

* :mod:`hgo_lab.simulator` — the round driver of ``hgo_common.driver`` on a virtual clock;
* :mod:`hgo_lab.cluster` — ``hgo-run``: one server and N worker processes on loopback;
* :mod:`hgo_lab.experiment` — ``hgo-experiment``: the paper's figures from the scenario
  files in ``hgo_lab/scenarios/`` (shipped as package data);
* :mod:`hgo_lab.plots` — ``hgo-plot`` and the figures (needs the ``lab`` extra: matplotlib).

Nothing in ``hgo_common``, ``hgo_server`` or ``hgo_worker`` imports this package.
"""
