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


# ---------------------------------------------------------------------------------- the contract's monopoly

#: the contract: the one package that parses model-file facts (checkpoint meta JSON, ONNX pspnet.*
#: metadata_props, engine / IR sidecars, the calibration table beside a Q/DQ ONNX)
CONTRACT = "card"
#: modules outside the contract that parse JSON, each with why what it parses is not a model-file fact
JSON_ALLOWED = {
    "export": "torch's per-node metadata (pkg.torch.onnx.name_scopes) that the exporter leaves on graph nodes",
    "runners.trt_runner": "TensorRT's engine inspector JSON, returned by the API (layer precisions), not a file",
    "debug.profile": "ONNX Runtime's profiling trace, a file the session just wrote",
    "train": "a checkpoint's training history (train_state, training progress), not the model's facts",
    "machine": "a benchmark record's environment section (python -m pspnet_deploy.machine RECORD.json)",
}
#: modules outside the contract that touch metadata_props, each with why
METADATA_PROPS_ALLOWED = {
    "export": "reads and strips torch's node/graph metadata the exporter leaves (not pspnet.* facts)",
}
#: artefact-name helpers whose files are model-file facts (reading them by hand is parsing them)
FACT_FILES = ("sidecar_path", "table_path_for")
FACT_SUFFIXES = (".calib.json", ".engine.json", ".xml.json", ".plan.json", ".trt.json")


def _mentions_fact_file(node) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            f = sub.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            if name in FACT_FILES:
                return True
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and sub.value.endswith(FACT_SUFFIXES):
            return True
    return False


def contract_reads(path: Path) -> list[tuple[str, int]]:
    """(what, line) of every place a module parses model-file facts by hand: a json.load(s) call,
    a ``.metadata_props`` access, or a read (read_text, read_bytes, open) of a sidecar or table path."""
    found = []
    tree = ast.parse(path.read_text(), str(path))
    json_names = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "json"
                  for a in n.names if a.name in ("load", "loads")}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "metadata_props":
            found.append(("metadata_props", node.lineno))
        elif isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Attribute) and f.attr in ("load", "loads") and isinstance(f.value, ast.Name)
                    and f.value.id == "json") or (isinstance(f, ast.Name) and f.id in json_names):
                found.append(("json", node.lineno))
            elif (isinstance(f, ast.Attribute) and f.attr in ("read_text", "read_bytes") and _mentions_fact_file(f.value)) \
                    or (isinstance(f, ast.Name) and f.id == "open" and node.args and _mentions_fact_file(node.args[0])):
                found.append(("fact file", node.lineno))
    return found


def _monopoly_breaches(modules) -> tuple[list[str], set]:
    breaches, used = [], set()
    for name, path in modules:
        if name.split(".")[0] == CONTRACT:
            continue
        for what, line in contract_reads(path):
            allowed = {"json": JSON_ALLOWED, "metadata_props": METADATA_PROPS_ALLOWED}.get(what, {})
            if name in allowed:
                used.add((what, name))
                continue
            breaches.append(f"pspnet_deploy/{path.relative_to(PKG)}:{line} ({name}) parses {what} outside the contract")
    return breaches, used


def test_only_the_contract_parses_model_file_facts():
    """Issue 21's monopoly: checkpoint meta, ONNX pspnet.* metadata, sidecars and calibration tables
    are read through pspnet_deploy.card; every other JSON parse or metadata_props access is on the
    allow-list with its reason, and every allow-list entry is still needed."""
    breaches, used = _monopoly_breaches(_modules())
    assert not breaches, "read model-file facts through pspnet_deploy.card:\n" + "\n".join(breaches)
    stale = {("json", m) for m in JSON_ALLOWED} | {("metadata_props", m) for m in METADATA_PROPS_ALLOWED}
    assert stale <= used, f"allow-list entries no longer needed (remove them): {sorted(stale - used)}"


def test_the_monopoly_check_sees_hand_written_readers():
    """The scanner itself: a probe module that reads a sidecar, a table and ONNX metadata by hand is
    caught on every line (relative, aliased and open() forms)."""
    probe = PKG / "runners" / "_contract_probe.py"
    probe.write_text("import json\nfrom json import loads as L\nfrom ..card import sidecar_path\n"
                     "def f(p, m):\n"
                     "    a = json.loads(sidecar_path(p).read_text())\n"
                     "    b = {x.key: x.value for x in m.metadata_props}\n"
                     "    c = L(open(str(p) + '.calib.json').read())\n"
                     "    d = (p.parent / 'x.engine.json').read_bytes()\n")
    try:
        breaches, _ = _monopoly_breaches([("runners._contract_probe", probe)])
    finally:
        probe.unlink()
    lines = sorted(int(b.split(":")[1].split()[0]) for b in breaches)
    assert lines == [5, 5, 6, 7, 7, 8], breaches


def test_no_function_runs_over_120_lines():
    """Issue 21: long functions become named steps a reader can follow; a new one over the limit
    fails here with its place (split it into named steps rather than raising the limit)."""
    import ast

    limit, long = 120, []
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    long.append(f"{path.relative_to(PKG.parent)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, f"functions over {limit} lines:\n" + "\n".join(long)


def test_no_import_circle_in_the_package():
    """Issue 21: no import circle anywhere in pspnet_deploy, function-level imports included (the
    write guard of the file plan reaches utils through utils.WRITE_GUARDS, not an import back)."""
    from test_trt_api import import_circles

    assert import_circles(("",)) == []
