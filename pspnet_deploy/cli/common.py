"""Shared CLI plumbing: one clear line for bad input, ``--debug`` for the traceback."""
from __future__ import annotations

import argparse
import os
import re
import sys
import traceback
import warnings
from typing import Callable, Sequence

from ..errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage text is one ``--help`` away)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` only where it says something: not for None, not for on/off flags, and
    not where the help text already names its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.nargs == 0 or re.search(r"\bdefault", text, re.I):
            return text
        return super()._get_help_string(action)


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description=description, formatter_class=_DefaultsFormatter)
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return p


def run(prog: str, main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)``; turn UserError, missing files and interrupts into one line + exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if not debug and not sys.warnoptions and not os.environ.get("PYTHONWARNINGS"):
        # library warnings (torch, onnx, ...) are for developers: --debug or PYTHONWARNINGS shows them
        warnings.simplefilter("ignore")
    from ..runfiles import reset

    try:
        return int(main(args) or 0)
    except UserError as e:
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # the context managers between here and the interrupt have removed their temporaries
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        _exit_quietly_on_second_interrupt()
        return 130
    except Exception as e:  # noqa: BLE001 - last resort: still one line unless --debug
        from ..utils import no_space_error

        full = no_space_error(e)
        if debug:
            traceback.print_exc()
        if full is not None:  # a full disk met by a writer that has no check of its own (a library's)
            print(f"{prog}: error: {full}", file=sys.stderr)
            return 2
        if not debug:
            print(f"{prog}: internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
                  f"(run with --debug for the traceback)", file=sys.stderr)
        return 1
    finally:
        reset()  # the command's file plan ends with it


def _exit_quietly_on_second_interrupt() -> None:
    """After the one "interrupted" line, a second Ctrl-C while the interpreter shuts down (joining a
    library's threads, running exit handlers) ends the process at once with 130 instead of printing
    the traceback of whatever was running then."""
    import signal

    def _now(signum, frame):
        try:
            sys.stderr.flush()
        finally:
            os._exit(130)

    try:
        signal.signal(signal.SIGINT, _now)
    except (ValueError, OSError):  # not the main thread: nothing to do
        pass


def refuse_ignored(parser: argparse.ArgumentParser, a: argparse.Namespace, rules) -> None:
    """Refuse an option that was set (away from its default) where it cannot take effect, instead of
    silently ignoring it: ``rules`` are ``(dest, ignored, why)`` with ``ignored`` true when the run
    would not use the option, and ``why`` completing "OPTION has no effect ...". """
    for dest, ignored, why in rules:
        if ignored and getattr(a, dest) != parser.get_default(dest):
            flag = next((s for act in parser._actions if act.dest == dest for s in act.option_strings
                         if s.startswith("--")), "--" + dest.replace("_", "-"))
            raise UserError(f"{flag} has no effect {why}; drop it")


def size_arg(values, what: str = "--input-size", batch: int = 1) -> tuple[int, int] | None:
    """An (H, W) argument within :func:`pspnet_deploy.utils.check_input_size`'s bounds (no torch import)."""
    from ..utils import check_input_size

    return check_input_size(values, what, batch=batch)


def add_window_args(p: argparse.ArgumentParser) -> None:
    """How a prediction is made (pspnet-eval, pspnet-predict): --mode, --flip, --scales, --stride."""
    p.add_argument("--mode", choices=["whole", "slide"], default=None,
                   help="whole image or sliding window (default: whole; slide with --scales)")
    p.add_argument("--flip", action="store_true", help="average with the horizontally flipped prediction")
    p.add_argument("--scales", type=float, nargs="+", default=None, metavar="S",
                   help="multi-scale testing: average the sliding-window logits of the image rescaled by each "
                        "factor (the paper's: 0.5 0.75 1 1.25 1.5 1.75); implies --mode slide")
    p.add_argument("--stride", type=float, default=2 / 3, help="sliding-window stride as a fraction of the window")
    p.add_argument("--test-time", choices=["source"], default=None,
                   help="source: the test-time procedure recorded in the model by pspnet-convert (the mmseg config's "
                        "test_cfg and test resize, semseg's test.py settings) instead of --mode/--flip/--scales/--stride")


def apply_test_time(a: argparse.Namespace, size, card=None):
    """``--test-time source``: set ``a.mode/flip/stride/scales/resize`` from the model's recorded
    ``test_time`` (after :func:`check_window_args`); returns the input size a checkpoint must run
    at (``size`` when none is needed). A file without the record, or of a size the procedure
    cannot run at, is refused with one line."""
    if not getattr(a, "test_time", None):
        return size
    from ..card import read_card
    from ..sliding import test_time_options

    card = card if card is not None else read_card(a.model)  # ``card``: the caller's, when it has read it
    tt = card.meta.get("test_time")
    if not isinstance(tt, dict):
        raise UserError(f"{a.model}: no test-time procedure recorded (pspnet-convert records the source's; an exported "
                        f"file carries it from its checkpoint); choose --mode/--flip/--scales instead")
    current = tuple(size) if size is not None else card.input_size
    opts = test_time_options(tt, current, str(a.model), adjustable=card.kind == "torch" and size is None)
    a.mode, a.flip, a.stride, a.scales, a.resize = opts["mode"], opts["flip"], opts["stride"], opts["scales"], opts["resize"]
    if card.kind == "torch" and opts["input_size"] is not None:
        return opts["input_size"]
    return size


def check_window_args(a: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> None:
    """Check :func:`add_window_args`' options in place (no torch import): ``a.mode`` becomes slide when
    --scales is given and whole otherwise, ``a.scales`` a checked tuple (``(1.0,)`` without --scales).
    With ``parser``: --stride set for a whole-image prediction is refused (it would be ignored)."""
    from ..sliding import check_scales

    a.resize = None
    if getattr(a, "test_time", None) and (a.mode or a.flip or a.scales or a.stride != 2 / 3):
        raise UserError("--test-time source sets the mode, flip, scales and stride itself; drop --mode/--flip/--scales/"
                        "--stride, or drop --test-time")
    if not 0 < a.stride <= 1:
        raise UserError(f"--stride must be in (0, 1], got {a.stride}")
    if parser is not None:
        refuse_ignored(parser, a, [("stride", (a.mode or ("slide" if a.scales else "whole")) == "whole",
                                    "on a whole-image prediction (it sets the sliding-window step: add --mode slide)")])
    a.mode = a.mode or ("slide" if a.scales else "whole")
    a.scales = check_scales(a.scales or (1.0,), a.mode)
