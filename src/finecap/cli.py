"""The `finecap` command: one sub-command per module in `finecap.commands`.

Each command module exposes `register(subparsers)`, which adds its parser and sets
`func=handler` where `handler(args) -> int` returns the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# OpenMP threads that spin while waiting starve every other process on a small shared CPU
# (measured here: a captioner trained 10x slower beside one other job). Sleeping threads
# cost little on an idle machine. Set before torch is imported; the user's value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Modules in finecap.commands, in the order `finecap --help` lists them.
COMMAND_MODULES = [
    "caption",
    "scenes",
    "train",
    "evaluate",
    "pairwise",
    "clip",
    "grammar",
    "reproduce",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finecap", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"finecap.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
