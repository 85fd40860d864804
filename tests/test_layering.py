"""The package's layering, enforced by reading every import of pspnet_deploy/ (module level and
inside functions alike): nothing imports a stage above it, only the TensorRT build and the
TensorRT runner import tensorrt and the CUDA bindings, and only the OpenVINO build and the OpenVINO
runner import openvino. The tiers are stated in README.md (Layout)."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PKG = ROOT / "pspnet_deploy"

#: tier of each module or package (first matching prefix wins); a module may import its own tier and below
TIERS = [
    (0, ("errors", "utils", "compare", "metrics", "data", "model", "card", "checkpoint", "onnx_graph", "ort_session",
         "parser_check", "flops", "geometry", "machine", "memory", "runfiles")),
    (1, ("precision",)),
    (2, ("export", "interop")),
    (3, ("engine",)),
    (4, ("runners", "evaluate", "sliding", "predict", "bench", "report", "triton", "train", "train_config", "qat",
         "debug")),
    (5, ("cli", "demo", "__init__")),
]
TRT_ALLOWED = {"engine.build", "runners.trt_runner"}
OPENVINO_ALLOWED = {"engine.openvino", "runners.openvino_runner"}
#: upward imports that exist today, each with the work that removes it (empty when none remain)
KNOWN_UPWARD: set[tuple[str, str]] = set()


def tier(module: str) -> int:
    head = module.split(".")[0]
    for t, names in TIERS:
        if head in names:
            return t
    raise AssertionError(f"pspnet_deploy.{module} has no tier in tests/test_layering.py; add it (and to the README)")


def imports(path: Path) -> list[tuple[str, int]]:
    """(absolute module inside pspnet_deploy or a foreign top-level name, line) of every import."""
    rel = path.relative_to(PKG).with_suffix("")
    parts = list(rel.parts)
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                out.append((node.module, node.lineno))
                continue
            base = package[: len(package) - (node.level - 1)]
            mod = ".".join(base + ([node.module] if node.module else []))
            if node.module is None:  # from . import x
                out += [(f"{mod}.{a.name}" if mod else a.name, node.lineno) for a in node.names]
            else:
                out.append((f"pspnet_deploy.{mod}" if mod else "pspnet_deploy", node.lineno))
    return [(m if not m.startswith("pspnet_deploy.") else m, line) for m, line in out]


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        yield ".".join(rel.parts), path


def test_nothing_imports_a_stage_above_it():
    upward = []
    for name, path in _modules():
        if name == "__init__":
            continue
        own = tier(name)
        for target, line in imports(path):
            if not target.startswith("pspnet_deploy."):
                continue
            dep = target[len("pspnet_deploy."):]
            if dep.split(".")[0] == name.split(".")[0]:
                continue  # inside one package
            if tier(dep) > own and (name, dep) not in KNOWN_UPWARD:
                upward.append(f"pspnet_deploy/{path.relative_to(PKG)}:{line} ({name}, tier {own}) imports {dep} "
                              f"(tier {tier(dep)})")
    assert not upward, "imports of a stage above:\n" + "\n".join(upward)


def test_only_the_build_and_the_runner_touch_tensorrt_and_cuda():
    found = []
    for name, path in _modules():
        for target, line in imports(path):
            if target.split(".")[0] in ("tensorrt", "cuda", "pycuda") and name not in TRT_ALLOWED:
                found.append(f"pspnet_deploy/{path.relative_to(PKG)}:{line} imports {target}")
    assert not found, "\n".join(found)


def test_only_the_openvino_build_and_runner_touch_openvino():
    found = []
    for name, path in _modules():
        for target, line in imports(path):
            if target.split(".")[0] == "openvino" and name not in OPENVINO_ALLOWED:
                found.append(f"pspnet_deploy/{path.relative_to(PKG)}:{line} imports {target}")
    assert not found, "\n".join(found)


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    """The parser itself: an upward import hidden in a function, written relatively, is found."""
    probe = PKG / "data" / "_layering_probe.py"
    probe.write_text("def f():\n    from ..bench import run_bench\n    from ...pspnet_deploy import card\n")
    try:
        found = imports(probe)
    finally:
        probe.unlink()
    assert ("pspnet_deploy.bench", 2) in found and tier("bench") > tier("data._layering_probe")
