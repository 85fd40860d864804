"""Every command's --help: no option says "(default: None)", none names its default twice."""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import re

import pytest

import pspnet_deploy.cli as cli_pkg


def _parsers():
    found = []
    for info in pkgutil.iter_modules(cli_pkg.__path__):
        mod = importlib.import_module(f"pspnet_deploy.cli.{info.name}")
        if hasattr(mod, "build_parser"):
            found.append((info.name, mod.build_parser()))
    return found


PARSERS = _parsers()


def _option_helps(parser: argparse.ArgumentParser):
    """(option, the help text as --help prints it) for every action, sub-commands included."""
    fmt = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _option_helps(sub)
            continue
        if action.help in (None, argparse.SUPPRESS):
            continue
        yield "/".join(action.option_strings) or action.dest, fmt._expand_help(action)


def test_every_cli_has_a_parser():
    names = {n for n, _ in PARSERS}
    assert {"train", "export", "calibrate", "build_engine", "bench", "eval", "predict", "triton", "debug",
            "convert", "qat"} <= names


@pytest.mark.parametrize("name,parser", PARSERS, ids=[n for n, _ in PARSERS])
def test_help_prints_each_default_once_and_never_none(name, parser):
    text = parser.format_help()
    assert "(default: None)" not in text
    bad = []
    for option, help_text in _option_helps(parser):
        if "(default: None)" in help_text or len(re.findall(r"\(default[ :]", help_text)) > 1:
            bad.append(f"{option}: {help_text}")
    assert not bad, f"pspnet-{name}: " + "\n".join(bad)


def test_formatter_keeps_a_real_default_and_drops_the_others():
    from pspnet_deploy.cli.common import make_parser

    p = make_parser("x", "test")
    p.add_argument("--size", type=int, default=4, help="size")
    p.add_argument("--out", default=None, help="folder")
    p.add_argument("--mode", default="a", help="mode (default: a, the fast one)")
    p.add_argument("--flag", action="store_true", help="a switch")
    helps = dict(_option_helps(p))
    assert helps["--size"] == "size (default: 4)"
    assert helps["--out"] == "folder"
    assert helps["--mode"] == "mode (default: a, the fast one)"
    assert helps["--flag"] == "a switch"
