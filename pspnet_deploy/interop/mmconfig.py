"""Read mmengine / mmcv Python configs without executing them.

A config is a Python file of assignments (``model = dict(type='EncoderDecoder', ...)``), possibly
inheriting from others through ``_base_`` (a path or list of paths relative to the file). It is
parsed with :mod:`ast` and evaluated by a small interpreter that knows only literals, names bound
earlier in the same file, ``dict(...)`` / ``list(...)`` / ``tuple(...)`` calls, unary minus and
``+ - * / // %`` on numbers, strings, lists and tuples, subscripts, and mmengine's
``{{_base_.name}}`` references. Anything else (imports, other calls, attribute access, lambdas,
comprehensions) makes that one variable *unevaluable*: reading it later raises
:class:`~pspnet_deploy.errors.UserError` with one line that says where, and the rest of the
config stays usable. Inheritance follows mmengine's rule: the child's dicts are merged key by key
into the bases' (``_delete_=True`` replaces instead), every other value replaces.

The configs that ship with mmsegmentation (``mmseg/.mim/configs``) are found without importing
mmseg, so a ``_base_`` that does not exist beside a user's file is looked up there too.
"""
from __future__ import annotations

import ast
import importlib.util
import operator
import re
from pathlib import Path

from ..errors import UserError

__all__ = ["Unevaluable", "read_config_file", "read_config_text", "mmseg_config_root", "resolve_config_path", "get"]

_MAX_DEPTH = 32
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
_BASE_REF = re.compile(r"\{\{\s*_base_\.([A-Za-z_][\w.]*)\s*\}\}")


class Unevaluable:
    """A config value that could not be evaluated safely (why and where)."""

    def __init__(self, reason: str):
        self.reason = reason

    def __repr__(self) -> str:
        return f"<unevaluable: {self.reason}>"


def mmseg_config_root() -> Path | None:
    """``mmseg/.mim/configs`` of the installed mmsegmentation wheel (found without importing it)."""
    try:
        spec = importlib.util.find_spec("mmseg")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        root = Path(loc) / ".mim" / "configs"
        if root.is_dir():
            return root
    return None


def resolve_config_path(name: str | Path) -> Path:
    """A config path, or the bare name of a config shipped with mmsegmentation
    (``pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py``)."""
    p = Path(name)
    if p.is_file():
        return p
    root = mmseg_config_root()
    if root is not None and p.name == str(name):
        hits = sorted(root.rglob(p.name if p.suffix else p.name + ".py"))
        if len(hits) == 1:
            return hits[0]
    hint = "" if root is not None else " (install the interop extra to use mmsegmentation's shipped configs by name)"
    raise UserError(f"{name}: config file not found{hint}")


class _Evaluator:
    def __init__(self, where: str, scope: dict, base: dict):
        self.where = where
        self.scope = scope
        self.base = base

    def fail(self, node, what: str):
        raise _NotSafe(f"{self.where}:{getattr(node, 'lineno', '?')}: {what}")

    def eval(self, node):
        if isinstance(node, ast.Constant):
            if isinstance(node.value, str):
                return self._base_refs(node, node.value)
            return node.value
        if isinstance(node, ast.Dict):
            out = {}
            for k, v in zip(node.keys, node.values):
                if k is None:  # {**other}
                    other = self.eval(v)
                    if not isinstance(other, dict):
                        self.fail(node, "'**' of a non-dict")
                    out.update(other)
                else:
                    out[self.eval(k)] = self.eval(v)
            return out
        if isinstance(node, ast.List):
            return [self.eval(e) for e in node.elts]
        if isinstance(node, ast.Tuple):
            return tuple(self.eval(e) for e in node.elts)
        if isinstance(node, ast.Name):
            if node.id in self.scope:
                v = self.scope[node.id]
                if isinstance(v, Unevaluable):
                    raise _NotSafe(v.reason)
                return v
            self.fail(node, f"name '{node.id}' is not defined earlier in the file")
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = self.eval(node.operand)
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                self.fail(node, "unary sign on a non-number")
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            a, b = self.eval(node.left), self.eval(node.right)
            ok = (isinstance(a, (int, float)) and isinstance(b, (int, float))) or \
                 (type(a) is type(b) and isinstance(a, (str, list, tuple)) and isinstance(node.op, ast.Add)) or \
                 (isinstance(a, (str, list, tuple)) and isinstance(b, int) and isinstance(node.op, ast.Mult)
                  and abs(b) < 10000)
            if not ok:
                self.fail(node, f"operator {type(node.op).__name__} on {type(a).__name__} and {type(b).__name__}")
            try:
                return _BINOPS[type(node.op)](a, b)
            except (ArithmeticError, TypeError) as e:
                self.fail(node, f"arithmetic error ({e})")
        if isinstance(node, ast.Subscript):
            obj, key = self.eval(node.value), self.eval(node.slice)
            try:
                return obj[key]
            except (KeyError, IndexError, TypeError):
                self.fail(node, "subscript that does not evaluate")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("dict", "list", "tuple"):
            if node.func.id == "dict":
                out = {}
                for a in node.args:
                    v = self.eval(a)
                    if not isinstance(v, dict):
                        self.fail(node, "dict() of a non-dict")
                    out.update(v)
                for kw in node.keywords:
                    v = self.eval(kw.value)
                    if kw.arg is None:
                        if not isinstance(v, dict):
                            self.fail(node, "'**' of a non-dict")
                        out.update(v)
                    else:
                        out[kw.arg] = v
                return out
            if node.keywords or len(node.args) > 1:
                self.fail(node, f"{node.func.id}() with keywords")
            v = self.eval(node.args[0]) if node.args else []
            if not isinstance(v, (list, tuple, str, dict)):
                self.fail(node, f"{node.func.id}() of {type(v).__name__}")
            return list(v) if node.func.id == "list" else tuple(v)
        if isinstance(node, ast.Set) and len(node.elts) == 1 and isinstance(node.elts[0], ast.Set) \
                and len(node.elts[0].elts) == 1 and _dotted(node.elts[0].elts[0]).startswith("_base_."):
            return self._base_lookup(node, _dotted(node.elts[0].elts[0])[len("_base_."):])  # {{_base_.x}} unquoted
        if isinstance(node, ast.Attribute) and _dotted(node).startswith("_base_."):
            return self._base_lookup(node, _dotted(node)[len("_base_."):])
        what = type(node).__name__
        if isinstance(node, ast.Call):
            what = f"call of {ast.unparse(node.func)}()"
        self.fail(node, f"{what} is not evaluated (configs are read, never run)")

    def _base_lookup(self, node, dotted: str):
        obj = self.base
        for part in dotted.split("."):
            if not isinstance(obj, dict) or part not in obj:
                self.fail(node, f"_base_.{dotted} is not defined in the base configs")
            obj = obj[part]
        if isinstance(obj, Unevaluable):
            raise _NotSafe(obj.reason)
        return obj

    def _base_refs(self, node, text: str):
        m = _BASE_REF.fullmatch(text.strip())
        if m:
            return self._base_lookup(node, m.group(1))
        return text


def _dotted(node) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


class _NotSafe(Exception):
    pass


def _merge(child: dict, base: dict) -> dict:
    """mmengine's rule: dicts merge key by key (``_delete_=True`` replaces), other values replace."""
    out = dict(base)
    for k, v in child.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and not v.get("_delete_", False):
            out[k] = _merge(v, out[k])
        elif isinstance(v, dict):
            out[k] = {kk: vv for kk, vv in v.items() if kk != "_delete_"}
        else:
            out[k] = v
    return out


def _strip_delete(v):
    if isinstance(v, dict):
        return {k: _strip_delete(x) for k, x in v.items() if k != "_delete_"}
    if isinstance(v, list):
        return [_strip_delete(x) for x in v]
    return v


def _evaluate(text: str, where: str, base: dict) -> tuple[dict, list]:
    try:
        tree = ast.parse(text, filename=where)
    except SyntaxError as e:
        raise UserError(f"{where}:{e.lineno}: not a Python config ({e.msg})") from e
    scope: dict = {}
    base_names = None
    ev = _Evaluator(where, scope, base)
    for stmt in tree.body:
        if isinstance(stmt, (ast.Expr,)) and isinstance(stmt.value, ast.Constant):
            continue  # docstring
        if isinstance(stmt, (ast.Import, ast.ImportFrom, ast.With)):
            if "read_base" in ast.unparse(stmt) or (isinstance(stmt, ast.ImportFrom) and stmt.module == "mmengine.config"):
                raise UserError(f"{where}:{stmt.lineno}: new-style (read_base) configs are not read; pass the merged "
                                f"config (mmengine: Config.fromfile(...).dump('merged.py'))")
            continue  # other imports (custom_imports, typing): ignored, nothing is imported
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            if stmt.value is None:
                continue
            try:
                value = ev.eval(stmt.value)
            except _NotSafe as e:
                value = Unevaluable(str(e))
            except RecursionError:
                value = Unevaluable(f"{where}:{stmt.lineno}: expression nested too deeply")
            for t in targets:
                if isinstance(t, ast.Name):
                    scope[t.id] = value
                    if t.id == "_base_":
                        base_names = value
                elif isinstance(t, (ast.Tuple, ast.List)) and isinstance(value, (tuple, list)) \
                        and len(value) == len(t.elts) and all(isinstance(e, ast.Name) for e in t.elts):
                    for e, v in zip(t.elts, value):
                        scope[e.id] = v
                else:
                    for n in ast.walk(t):
                        if isinstance(n, ast.Name):
                            scope[n.id] = Unevaluable(f"{where}:{stmt.lineno}: assignment target not evaluated")
            continue
        # def, class, for, if, ...: nothing in it is run; names it binds are unevaluable
        for n in ast.walk(stmt):
            if isinstance(n, (ast.FunctionDef, ast.ClassDef)):
                scope[n.name] = Unevaluable(f"{where}:{stmt.lineno}: '{n.name}' is code, not data")
            elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                scope[n.id] = Unevaluable(f"{where}:{stmt.lineno}: '{n.id}' is set by a statement that is not evaluated")
    bases = []
    if base_names is not None:
        if isinstance(base_names, Unevaluable):
            raise UserError(f"{where}: _base_ could not be evaluated ({base_names.reason})")
        bases = [base_names] if isinstance(base_names, str) else list(base_names)
        if not all(isinstance(b, str) for b in bases):
            raise UserError(f"{where}: _base_ must be a path or a list of paths")
    scope.pop("_base_", None)
    return scope, bases


def _find_base(name: str, folder: Path | None, where: str) -> Path:
    cands = []
    if folder is not None:
        cands.append((folder / name).resolve())
    root = mmseg_config_root()
    if root is not None:
        # '../_base_/models/pspnet_r50-d8.py' or './pspnet_r50-d8_...py' relative to a shipped config
        parts = [p for p in Path(name).parts if p not in ("..", ".")]
        tail = Path(*parts) if parts else Path(name)
        cands += [root / tail] + [d / tail for d in root.iterdir() if d.is_dir()]
    for c in cands:
        if c.is_file():
            return c
    raise UserError(f"{where}: base config {name!r} not found beside the file"
                    + ("" if root is not None else " (mmsegmentation's shipped configs are not installed)"))


def _read(path: Path | None, text: str, where: str, depth: int) -> dict:
    if depth > _MAX_DEPTH:
        raise UserError(f"{where}: _base_ inheritance deeper than {_MAX_DEPTH} files (a cycle?)")
    folder = path.parent if path is not None else None
    # a first pass gives the _base_ list; base values are needed for {{_base_.x}} / _base_.x references
    _, bases = _evaluate(text, where, {})
    merged: dict = {}
    for b in bases:
        bp = _find_base(b, folder, where)
        merged = _merge(_read(bp, bp.read_text(encoding="utf-8"), str(bp), depth + 1), merged)
    scope, _ = _evaluate(text, where, merged) if bases else _evaluate(text, where, {})
    return _merge(scope, merged)


def read_config_file(path: str | Path) -> dict:
    """Evaluate a config file and its ``_base_`` chain into a plain dict (never runs it)."""
    path = resolve_config_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read config ({e})") from e
    if path.suffix.lower() not in (".py", ""):
        raise UserError(f"{path}: only Python configs (.py) are read; YAML/JSON mmseg configs are not supported")
    return _strip_delete(_read(path, text, str(path), 0))


def read_config_text(text: str, where: str = "<embedded config>") -> dict:
    """Evaluate config text (the merged ``meta['cfg']`` of an mmengine checkpoint)."""
    return _strip_delete(_read(None, text, where, 0))


def get(cfg: dict, dotted: str, default=None, required: bool = False):
    """``cfg['a']['b']`` for ``'a.b'``; an unevaluable value raises UserError (one line)."""
    obj = cfg
    for part in dotted.split("."):
        if isinstance(obj, Unevaluable):
            break
        if not isinstance(obj, dict) or part not in obj:
            if required:
                raise UserError(f"config has no '{dotted}'")
            return default
        obj = obj[part]
    if isinstance(obj, Unevaluable):
        raise UserError(f"config value '{dotted}' cannot be read without running code ({obj.reason})")
    return obj
