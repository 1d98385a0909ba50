"""The command line: gpuconv demo | summary | info | bench (also ``python -m gpuconv``)."""
from __future__ import annotations

import argparse
import sys


def _cmd_info(args) -> int:
    from ._show import show_config

    show_config()
    return 0


def _cmd_bench(args) -> int:
    from . import _bench

    return _bench.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpuconv", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="versions and which backends can run here")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("bench", help="time forward and backward on the benchmark shapes")
    from . import _bench

    _bench.add_arguments(p)
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
