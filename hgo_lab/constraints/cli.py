"""``python -m hgo_lab.constraints``: ``exec`` (the launcher), ``list``, ``clean``, ``check``.

Also the hidden ``reaper`` subcommand a lab starts. Errors (a missing feature, a bad
value) are printed naming the value and end with status 2 (issue 21, item 3).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .cleanup import _reap, clean, leftovers
from .common import ConstraintError
from .lab import check_support
from .launcher import _exec
from .limits import DeviceLimits

# ---------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hgo_lab.constraints",
        description="Real device constraints for HGO lab runs (CPU share, shaped link, latency).",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("exec", help="run a command inside a device's cgroup and network namespace")
    ex.add_argument("--cgroup", type=Path, default=None)
    ex.add_argument("--netns", default=None)
    ex.add_argument("argv", nargs=argparse.REMAINDER)
    ls = sub.add_parser("list", help="show leftovers (JSON)")
    ls.add_argument("--all", action="store_true", help="include the devices of labs still running")
    cl = sub.add_parser("clean", help="remove leftovers")
    cl.add_argument("--all", action="store_true", help="also the devices of labs still running")
    ck = sub.add_parser("check", help="say whether this host can apply the given constraints")
    ck.add_argument("--cpu-share", default=None)
    ck.add_argument("--uplink", default=None)
    ck.add_argument("--downlink", default=None)
    ck.add_argument("--latency", default=None)
    rp = sub.add_parser("reaper", help=argparse.SUPPRESS)
    rp.add_argument("--state", type=Path, required=True)
    rp.add_argument("--fd", type=int, required=True)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "exec":
            cmd = list(args.argv)
            if cmd and cmd[0] == "--":
                cmd = cmd[1:]
            _exec(args.cgroup, args.netns, cmd)
        elif args.cmd == "list":
            print(json.dumps(leftovers(include_live=args.all).as_dict(), indent=2))
        elif args.cmd == "clean":
            print(json.dumps(clean(include_live=args.all).as_dict(), indent=2))
        elif args.cmd == "check":
            check_support(DeviceLimits.parse(args.cpu_share, args.uplink, args.downlink, args.latency))
            print("ok")
        elif args.cmd == "reaper":
            _reap(args.state, args.fd)
    except (ConstraintError, ValueError, OSError) as exc:
        print(f"hgo_lab.constraints: {exc}", file=sys.stderr)
        return 2
    return 0
