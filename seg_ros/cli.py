"""`seg_ros` command line: one sub-command per module in seg_ros/commands/.

Each command module exposes ``register(subparsers)`` (cheap: arguments only)
and does its heavy imports inside the function it sets as ``func``, so
``seg_ros --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = {
    "segment": "seg_ros.commands.segment",
    "export": "seg_ros.commands.export",
    "build-engine": "seg_ros.commands.build_engine",
    "benchmark": "seg_ros.commands.benchmark",
    "evaluate": "seg_ros.commands.evaluate",
    "train": "seg_ros.commands.train",
    "tune-crf": "seg_ros.commands.tune_crf",
    "demo": "seg_ros.commands.demo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seg_ros", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # The ONNX exporter's internals log every pass at INFO: keep our own lines readable.
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        # Expected failures (bad arguments, missing files, broken weights): one clear line.
        logging.getLogger("seg_ros").error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
