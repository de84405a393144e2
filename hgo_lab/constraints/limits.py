"""What one device is given: a CPU share, an uplink, a downlink and a latency.

:class:`DeviceLimits` and the parsers of its user text (tc's bandwidth units, latency
in ms or s), and how ``hgo-run`` and ``--fleet`` entries name them per profile
(:data:`LIMIT_KEYS`, :func:`add_run_flags`, :class:`LimitTable`, :func:`split_entry`).
Pure values: nothing here touches the host. These are the per-device rates HGO
(Boubouh et al., SRDS 2022, §3) assumes, made settings (issue 21, item 3).
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# ---------------------------------------------------------------------------------- settings

_BANDWIDTH = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit)(?:/s)?\s*$", re.IGNORECASE)
_UNITS = {"bit": 1, "kbit": 1_000, "mbit": 1_000_000, "gbit": 1_000_000_000}


def parse_bandwidth(text: str | int | float) -> int:
    """Bits per second from ``1mbit``, ``500kbit``, ``2.5Mbit/s``, ``8000bit`` (tc's units).

    Byte units are refused on purpose: tc reads ``mbps`` as megabytes per second, a
    factor-of-8 trap.
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        bits = float(text)
    else:
        m = _BANDWIDTH.match(str(text))
        if m is None:
            raise ValueError(
                f"bandwidth must be a number with a unit bit, kbit, mbit or gbit (e.g. 1mbit), got {text!r}"
            )
        bits = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not math.isfinite(bits) or bits < 8_000:
        raise ValueError(f"bandwidth must be at least 8kbit (tbf cannot shape slower), got {text!r}")
    return int(bits)


def parse_latency(text: str | int | float) -> float:
    """One-way latency in ms from ``40``, ``40ms`` or ``0.04s`` (>= 0)."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        ms = float(text)
    else:
        s = str(text).strip().lower()
        scale = 1.0
        if s.endswith("ms"):
            s = s[:-2]
        elif s.endswith("s"):
            s, scale = s[:-1], 1000.0
        try:
            ms = float(s) * scale
        except ValueError:
            raise ValueError(f"latency must be milliseconds (40, 40ms or 0.04s), got {text!r}") from None
    if not math.isfinite(ms) or ms < 0:
        raise ValueError(f"latency must be a finite number of ms >= 0, got {text!r}")
    return ms


@dataclass(frozen=True)
class DeviceLimits:
    """The constraints of one device. ``None`` / 0 leaves that resource unconstrained.

    Attributes
    ----------
    cpu_share : float or None
        Fraction of one CPU (0.1 = 10 % of a core; up to the number of CPUs).
    uplink, downlink : int or None
        Bits per second, device → server and server → device.
    latency_ms : float
        One-way delay added in each direction (application-level relay, see the module doc).
    """

    cpu_share: float | None = None
    uplink: int | None = None
    downlink: int | None = None
    latency_ms: float = 0.0

    def __post_init__(self) -> None:
        ncpu = os.cpu_count() or 1
        share = self.cpu_share
        if share is not None and not (0 < share <= ncpu and math.isfinite(share)):
            raise ValueError(f"cpu share must be in (0, {ncpu}] (a fraction of one CPU), got {share}")
        for name in ("uplink", "downlink"):
            value = getattr(self, name)
            if value is not None and value < 8_000:
                raise ValueError(f"{name} must be at least 8000 bit/s, got {value}")
        if not (math.isfinite(self.latency_ms) and self.latency_ms >= 0):
            raise ValueError(f"latency must be a finite number of ms >= 0, got {self.latency_ms}")

    @classmethod
    def parse(
        cls,
        cpu_share: str | float | None = None,
        uplink: str | int | None = None,
        downlink: str | int | None = None,
        latency: str | float | None = None,
    ) -> DeviceLimits:
        """From user text (``--cpu-share 0.1 --uplink 1mbit --latency 40ms``)."""
        share: float | None = None
        if cpu_share is not None:
            try:
                share = float(cpu_share)
            except ValueError:
                raise ValueError(
                    f"cpu share must be a fraction of one CPU (e.g. 0.1), got {cpu_share!r}"
                ) from None
        return cls(
            cpu_share=share,
            uplink=None if uplink is None else parse_bandwidth(uplink),
            downlink=None if downlink is None else parse_bandwidth(downlink),
            latency_ms=0.0 if latency is None else parse_latency(latency),
        )

    @property
    def network(self) -> bool:
        """True when the device needs its own namespace (any link constraint)."""
        return self.uplink is not None or self.downlink is not None or self.latency_ms > 0

    @property
    def any(self) -> bool:
        return self.cpu_share is not None or self.network


# ---------------------------------------------------------------------------------- hgo-run

#: The per-device settings of ``hgo-run`` (flags ``--cpu-share``, ``--uplink``, ``--downlink``,
#: ``--latency``) and of ``--fleet`` JSON entries (keys with underscores).
LIMIT_KEYS = ("cpu_share", "uplink", "downlink", "latency")


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """The device flags of ``hgo-run``: each ``[PROFILE=]VALUE``, repeatable (no profile: all)."""
    helps = {
        "cpu_share": "CPU share of a device, a fraction of one core (0.1 = 10 %%): a cgroup quota",
        "uplink": "device -> server bandwidth, e.g. 1mbit: tbf on the device's veth",
        "downlink": "server -> device bandwidth, e.g. 10mbit: tbf on the host's veth",
        "latency": "one-way latency added each way, e.g. 40ms (application-level relay: no netem here)",
    }
    for key in LIMIT_KEYS:
        parser.add_argument(
            "--" + key.replace("_", "-"), action="append", default=[], metavar="[PROFILE=]VALUE",
            help=helps[key] + "; repeatable, e.g. weak=0.1 (default: unconstrained; needs root)",
        )  # fmt: skip


@dataclass(frozen=True)
class LimitTable:
    """Device limits per profile, from ``hgo-run``'s flags; ``"*"`` applies to every profile."""

    by_profile: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @classmethod
    def from_flags(
        cls, values: Mapping[str, Sequence[str]], known_profiles: Sequence[str] = ()
    ) -> LimitTable:
        """``{"cpu_share": ["weak=0.1", "0.5"], ...}`` -> table (ValueError naming a bad item)."""
        table: dict[str, dict[str, str]] = {}
        for key, items in values.items():
            if key not in LIMIT_KEYS:
                raise ValueError(f"unknown device setting {key!r}; expected one of {list(LIMIT_KEYS)}")
            for item in items:
                prof, sep, value = item.rpartition("=")
                prof = prof if sep else "*"
                if known_profiles and prof != "*" and prof not in known_profiles:
                    raise ValueError(
                        f"--{key.replace('_', '-')} {item!r}: unknown profile {prof!r}; "
                        f"expected one of {sorted(known_profiles)}"
                    )
                table.setdefault(prof, {})[key] = value
        out = cls(table)
        for prof in table:
            out.limits(prof)  # validates every value now, before anything starts
        return out

    def limits(self, profile: str, entry: Mapping[str, Any] | None = None) -> DeviceLimits:
        """The limits of one device: ``"*"``, then its profile's, then its fleet entry's own keys."""
        merged: dict[str, Any] = {**self.by_profile.get("*", {}), **self.by_profile.get(profile, {})}
        if entry:
            merged.update({k: entry[k] for k in LIMIT_KEYS if entry.get(k) is not None})
        return DeviceLimits.parse(
            merged.get("cpu_share"), merged.get("uplink"), merged.get("downlink"), merged.get("latency")
        )

    def any(self) -> bool:
        return bool(self.by_profile)


def split_entry(entry: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A ``--fleet`` entry -> (the hgo-worker session keys, the device keys of :data:`LIMIT_KEYS`)."""
    session = {k: v for k, v in entry.items() if k not in LIMIT_KEYS}
    device = {k: entry[k] for k in LIMIT_KEYS if k in entry}
    return session, device
