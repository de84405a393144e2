"""The project's exception root: every error HGO raises on purpose derives from :class:`HGOError`.

The tree (a class is listed under its root; each also derives from the builtin named in
brackets, so callers that catch the builtin keep working)::

    HGOError
     ├── SpecError [ValueError]        a setting, flag, config key or scenario value out of range
     │    ├── (hgo_server.config.ConfigError is this class)
     │    ├── ScenarioError            a scenario file (hgo_lab.experiment)
     │    ├── TokenFileError           a tokens file (hgo_server.auth)
     │    ├── FleetError               a --fleet file (hgo_worker.fleet)
     │    └── AttackKindError          an attack used where its kind cannot run (hgo_common.attacks)
     ├── PluginError [ValueError]      a plug-in reference that is unknown, not allowed or broken
     │    └── PluginMissing, PluginRefused (hgo_common.plugins)
     ├── DataError [ValueError]        a data file or dataset that cannot be used
     │    └── DataFileError            (hgo_common.datasets)
     ├── WireError [ValueError]        bytes that break the wire format or a chunk the round refuses
     │    └── WireFormatError (hgo_common.wire), ChunkRejected (hgo_common.collector)
     ├── ProtocolError                 a worker message the protocol forbids (hgo_server.errors)
     │    └── InvalidArgument, FailedPrecondition, PermissionDenied, ResourceExhausted,
     │        DeadlineExceeded, Aborted — one gRPC status code each (hgo_server.servicer)
     ├── CheckpointError               a checkpoint that cannot be read or resumed (hgo_server.checkpoint)
     ├── NoUsableName [ValueError]     a client certificate without a CN or SAN (hgo_server.auth)
     ├── ExportError [OSError]         the trained model could not be written (hgo_server.persistence)
     ├── SessionLost, Rejected, LocalDataError, Refused   a worker's session ends (hgo_worker)
     ├── ClusterError [RuntimeError]   a local cluster that could not run (hgo_lab.cluster)
     ├── ConstraintError [RuntimeError] a device limit this host cannot give (hgo_lab.constraints)
     └── PlottingUnavailable [RuntimeError] matplotlib (the lab extra) is missing (hgo_lab.plots)

Edges map this tree to what the outside sees, each in one place: ``hgo_server.servicer``
maps ``ProtocolError`` subclasses to gRPC status codes; the command-line entry points map
``SpecError``, ``PluginError`` and ``DataError`` to exit code 2 with the message, and
``ClusterError`` to exit code 1 (:data:`EXIT_CODES`).
"""

from __future__ import annotations


class HGOError(Exception):
    """Root of every error HGO raises on purpose."""


class SpecError(HGOError, ValueError):
    """A setting outside its declared kind or range; the message names the value and what was expected."""


class PluginError(HGOError, ValueError):
    """A plug-in reference that is unknown, not allowed here, or fails to load."""


class DataError(HGOError, ValueError):
    """A dataset or data file that cannot be used (missing, malformed, not matching the run)."""


class WireError(HGOError, ValueError):
    """Bytes that break the wire format, or a chunk the round refuses."""


EXIT_USAGE = 2
"""Exit code of every console script for bad input (flags, config, files, plug-ins)."""

EXIT_CODES: dict[type[HGOError], int] = {
    SpecError: EXIT_USAGE,
    PluginError: EXIT_USAGE,
    DataError: EXIT_USAGE,
}
"""Exit codes of the command-line edges by error class (the first matching base wins)."""


def exit_code(exc: BaseException, default: int = 1) -> int:
    """The exit code a console script returns for ``exc``."""
    for cls, code in EXIT_CODES.items():
        if isinstance(exc, cls):
            return code
    return default
