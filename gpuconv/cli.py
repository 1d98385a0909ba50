"""The command line: ``gpuconv demo | summary | info | bench`` (also ``python -m gpuconv``).

It uses the public API only; the demo's worked example and finite-difference check live in ``_demo``.
"""
from __future__ import annotations

import argparse
import sys


def _dims(text: str, what: str) -> tuple:
    """'48x64x10' -> (48, 64, 10)."""
    try:
        dims = tuple(int(v) for v in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must look like 48x64x10, got {text!r}") from None
    return dims


def _int_or_pair(text: str):
    dims = _dims(text, "value")
    if len(dims) == 1:
        return dims[0]
    if len(dims) == 2:
        return dims
    raise argparse.ArgumentTypeError(f"expected N or AxB, got {text!r}")


def _padding(text: str):
    """'valid' | 'same' | 'full' | P | PHxPW | T,B,L,R."""
    if text.lower() in ("valid", "same", "full"):
        return text.lower()
    dims = _dims(text, "padding")
    if len(dims) == 1:
        return dims[0]
    if len(dims) == 2:
        return dims
    if len(dims) == 4:
        return ((dims[0], dims[1]), (dims[2], dims[3]))
    raise argparse.ArgumentTypeError(f"padding must be valid|same|full|P|PHxPW|T,B,L,R, got {text!r}")


def _cmd_demo(args) -> int:
    from ._demo import run_demo

    return run_demo(backend=args.backend)


def _cmd_summary(args) -> int:
    from ._api import conv2d_info

    try:
        info = conv2d_info(args.input, args.kernel, stride=args.stride, padding=args.padding,
                           dilation=args.dilation, groups=args.groups, bias=not args.no_bias)
    except (TypeError, ValueError) as exc:
        print(f"gpuconv summary: {exc}", file=sys.stderr)
        return 2
    from ._show import format_info

    print(format_info(info))
    return 0


def _cmd_info(args) -> int:
    from ._show import show_config

    show_config()
    if args.kernels:
        print()
        try:
            from .cuda.nvrtc import format_resource_table
        except ImportError as exc:
            print(f"kernel resource table unavailable: {exc}")
            return 1
        print(format_resource_table())
    if args.sass:
        from .cuda.sass import format_sass_table

        print()
        print(format_sass_table())
    return 0


def _cmd_bench(args) -> int:
    from . import _bench

    return _bench.run(args)


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line on stderr (and exit status 2), not the usage text."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gpuconv",
        description="2D convolution layers on the GPU (CuPy) with a NumPy fallback.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,summary,info,bench}",
                                parser_class=_Parser)

    p = sub.add_parser("demo", help="the worked example, a ReLU layer, and a checked sigmoid backward")
    p.add_argument("--backend", default="auto", help="auto (default), numpy, cupy or emulator")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("summary", help="a layer's output shape, multiplications and parameters")
    p.add_argument("--input", required=True, type=lambda t: _dims(t, "--input"),
                   help="HxW, HxWxC or NxHxWxC, e.g. 48x64x10")
    p.add_argument("--kernel", required=True, type=lambda t: _dims(t, "--kernel"),
                   help="KHxKW (with a 2-D input) or KHxKWxCxM, e.g. 3x3x10x20")
    p.add_argument("--stride", type=_int_or_pair, default=1, help="S or S1xS2 (default 1)")
    p.add_argument("--padding", type=_padding, default="valid",
                   help="valid (default), same, full, P, PHxPW or T,B,L,R")
    p.add_argument("--dilation", type=_int_or_pair, default=1, help="D or D1xD2 (default 1)")
    p.add_argument("--groups", type=int, default=1, help="channel groups (default 1)")
    p.add_argument("--no-bias", action="store_true", help="the layer has no bias")
    p.set_defaults(func=_cmd_summary)

    p = sub.add_parser("info", help="versions, and which backends can run here and why not")
    p.add_argument("--kernels", action="store_true",
                   help="also compile every kernel with NVRTC and print registers, shared memory and spills")
    p.add_argument("--sass", action="store_true",
                   help="also disassemble every kernel (nvdisasm): its instruction mix and main loop")
    p.set_defaults(func=_cmd_info)

    from . import _bench

    p = sub.add_parser("bench", help="time forward and backward on the benchmark shapes")
    _bench.add_arguments(p)
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OverflowError, MemoryError) as exc:
        # bad input that got past the command's own checks (a shape too large to allocate, a bad
        # environment variable, ...): one line on stderr, as for a bad command line, never a traceback
        print(f"gpuconv {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
