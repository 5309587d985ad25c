"""The `emu3` command: one entry point, subcommands contributed by each installed package.

A package adds a subcommand group by declaring an entry point in the group `emu3.commands`
whose value is a function `register(subparsers)`; it adds its parser with a `func` default
taking the parsed arguments. Errors meant for the user are raised as `UserError` and printed
without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from importlib.metadata import entry_points
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

# MindSpore reads its log level once, at import: keep the command's output to warnings we emit
# ourselves unless the user asked for MindSpore's own (GLOG_v=1 or 2).
os.environ.setdefault("GLOG_v", "3")


class UserError(Exception):
    """A problem with the user's input: printed as `emu3: error: ...`, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emu3", description="Emu3 on MindSpore.")
    sub = parser.add_subparsers(dest="group", metavar="COMMAND")
    sub.required = True
    for ep in sorted(entry_points(group="emu3.commands"), key=lambda e: e.name):
        try:
            register = ep.load()
        except Exception as exc:  # one broken package must not take every command down
            print(f"emu3: warning: commands of {ep.value!r} unavailable: {exc}", file=sys.stderr)
            continue
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (UserError, FileNotFoundError, ValueError) as exc:
        print(f"emu3: error: {exc}", file=sys.stderr)
        return 2
    return 0


def progress(items: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it",
             stream=None) -> Iterator[T]:
    """A dependency-free progress bar on stderr: count, rate and elapsed time.

    Quiet when the stream is not a terminal, except for a final summary line.
    """
    stream = stream or sys.stderr
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    tty = hasattr(stream, "isatty") and stream.isatty()
    start = last = time.perf_counter()
    n = 0

    def line() -> str:
        elapsed = time.perf_counter() - start
        rate = n / elapsed if elapsed > 0 else 0.0
        of = f"/{total}" if total is not None else ""
        bar = ""
        if total:
            filled = int(20 * n / total)
            bar = "[" + "#" * filled + "." * (20 - filled) + "] "
        return f"{desc}: {bar}{n}{of} {unit} {rate:.2f} {unit}/s {elapsed:.1f}s"

    for item in items:
        yield item
        n += 1
        now = time.perf_counter()
        if tty and (now - last > 0.1 or n == total):
            stream.write("\r" + line())
            stream.flush()
            last = now
    stream.write(("\r" if tty else "") + line() + "\n")
    stream.flush()


if __name__ == "__main__":
    raise SystemExit(main())
