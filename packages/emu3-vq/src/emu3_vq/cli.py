"""The `emu3` command: one entry point, subcommands contributed by each installed package.

A package adds a subcommand group by declaring an entry point in the group `emu3.commands`
whose value is a function `register(subparsers)`; it adds its parser with a `func` default
taking the parsed arguments. Errors meant for the user are raised as `UserError` and printed
without a traceback. Ctrl-C and SIGTERM print one line and exit 130 and 143: every output
is written under a temporary name and renamed when complete, so nothing partial is left.

Once MindSpore has run a model, Ctrl-C reaches Python as SIGTERM: MindSpore's op-executor
threads and graph runs install a SIGINT handler that calls kill(getpid(), SIGTERM)
(runtime/pynative, graph_scheduler.cc). Python cannot tell that SIGTERM from another one
without blocking SIGTERM in every thread, which the processes a command starts (msrun) would
inherit, so such a Ctrl-C ends as SIGTERM does: one line, exit 143.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from importlib.metadata import PackageNotFoundError, distributions, entry_points, version
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

# MindSpore reads its log level once, at import: keep the command's output to warnings we emit
# ourselves unless the user asked for MindSpore's own (GLOG_v=1 or 2).
os.environ.setdefault("GLOG_v", "3")


class UserError(Exception):
    """A problem with the user's input: printed as `emu3: error: ...`, exit status 2."""


def check_outputs(outputs, inputs=(), overwrite: bool = False, option: str = "--output-dir", *,
                  directories=()) -> None:
    """Every check of output paths, before any work: the one overwrite policy of every command.

    Each output must not be an input, must not exist unless `overwrite`, and its parent must be
    a writable directory or creatable (no regular file in the way). `directories` are outputs
    that are folders (a video's frames): checked the same way, and a regular file of that name
    is refused even with `overwrite`. Raises UserError naming the path and `option`.
    """
    from pathlib import Path

    resolved = {Path(p).resolve() for p in inputs}
    existing = []
    folders = [Path(d) for d in directories]
    for out in [*(Path(o) for o in outputs), *folders]:
        if out.resolve() in resolved:
            raise UserError(f"output {out} would overwrite an input; choose another {option}")
        parent = out.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise UserError(f"cannot write {out}: {parent} is not a directory ({option})")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UserError(f"cannot write {out}: {parent} is not writable ({option})")
        if out in folders and out.exists() and not out.is_dir():
            raise UserError(f"cannot write the folder {out}: a file of that name is in the way ({option})")
        if out.exists():
            existing.append(str(out))
    if existing and not overwrite:
        shown = ", ".join(existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise UserError(f"{shown} already exist{'s' if len(existing) == 1 else ''}; "
                        f"pass --overwrite to replace, or choose another {option}")


def arg_type(convert):
    """An argparse `type` from `convert(text)`, which returns the value or raises ValueError with
    a message: argparse then prints `argument --NAME: message`, naming the option, before any
    work (instead of `invalid convert value`)."""
    def parse(text: str):
        try:
            return convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def int_at_least(low: int):
    """An argparse `type`: an integer >= `low` (`--batch-size`, `--seed`), naming the option."""
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise ValueError(f"must be an integer >= {low}, got {value}")
        return value

    return arg_type(convert)


DEVICE_CHOICES = ("cpu", "gpu", "ascend")  # emu3_vq.device.DEVICES; literal here: no MindSpore import
DTYPE_CHOICES = ("fp32", "fp16", "bf16")  # emu3_vq.device.DTYPES


def add_runtime_options(parser: argparse.ArgumentParser, dtype: bool = True) -> None:
    """--device, --device-id, --threads (and --dtype): every command that runs a model has them;
    `apply_runtime(args)` acts on them before the model is built."""
    group = parser.add_argument_group("device")
    group.add_argument("--device", choices=DEVICE_CHOICES, default=None,
                       help="where to run (default: MindSpore's default device, CPU on a machine without "
                            "an accelerator)")
    group.add_argument("--device-id", type=int_at_least(0), default=None, metavar="N",
                       help="which chip of --device (default: 0)")
    if dtype:
        group.add_argument("--dtype", choices=DTYPE_CHOICES, default=None,
                           help="weights and compute dtype (default: fp32 on CPU, fp16 on GPU, bf16 on Ascend)")
    group.add_argument("--threads", type=int_at_least(1), default=None, metavar="N",
                       help="CPU kernel threads (default: MindSpore's)")


def apply_runtime(args: argparse.Namespace) -> None:
    """Select the device and thread count named by `add_runtime_options`' flags."""
    if getattr(args, "device_id", None) is not None and getattr(args, "device", None) is None:
        raise UserError("--device-id needs --device (gpu or ascend)")
    from . import device

    device.select(getattr(args, "device", None), getattr(args, "device_id", None), getattr(args, "threads", None))


def versions() -> dict[str, str]:
    """Installed distributions of this project (emu3-*) and MindSpore, name -> version."""
    found = {}
    for dist in distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name.startswith("emu3-"):
            found[name] = dist.version
    try:
        found["mindspore"] = version("mindspore")
    except PackageNotFoundError:
        pass
    return dict(sorted(found.items()))


class _Version(argparse.Action):
    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        for name, ver in versions().items():
            print(f"{name} {ver}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emu3", description="Emu3 on MindSpore.")
    parser.add_argument("--version", action=_Version, help="print the installed packages' versions and exit")
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


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so that cleanups (temporary files) run as for
    Ctrl-C; a BaseException, so that `except Exception` does not swallow it."""


def _terminate(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Run one `emu3` command: exit 0, 2 for a user error, 1 for a system error (disk full),
    130 on Ctrl-C and 143 on SIGTERM, with one line on stderr and no traceback."""
    in_main_thread = threading.current_thread() is threading.main_thread()  # signals need it
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        args = build_parser().parse_args(argv)
        args.func(args)
    except (UserError, FileNotFoundError, ValueError) as exc:
        print(f"emu3: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, MemoryError) as exc:
        print(f"emu3: error: {exc or 'out of memory'}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("emu3: interrupted; nothing partial written", file=sys.stderr)
        return 130
    except Terminated:
        print("emu3: terminated (SIGTERM, or Ctrl-C while MindSpore ran); nothing partial written",
              file=sys.stderr)
        return 143
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    return 0


def progress(items: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it",
             stream=None) -> Iterator[T]:
    """A tqdm progress bar on stderr over `items` (count, rate, elapsed, remaining)."""
    from tqdm.auto import tqdm

    return iter(tqdm(items, total=total, desc=desc, unit=unit, file=stream or sys.stderr, dynamic_ncols=True))


if __name__ == "__main__":
    raise SystemExit(main())
