"""A Triton Inference Server model repository from an ONNX file or a TensorRT engine.

Layout written (``version`` 1 by default)::

    <repo>/<name>/config.pbtxt
    <repo>/<name>/pspnet.json          classes, palette, preprocessing, output kind (for clients)
    <repo>/<name>/1/model.onnx         (+ its external-data files)   backend "onnxruntime"
    <repo>/<name>/1/model.plan         (+ model.plan.json, the sidecar) platform "tensorrt_plan"
    <repo>/<name>/1/model.xml          (+ model.bin, model.xml.json)     backend "openvino" (CPU)

OpenVINO: the sidecar's precision becomes the backend's parameters: ``HINT_BF16: YES`` for a
BF16 IR (Triton's OpenVINO backend has no way to ask for f32, so an FP32 IR served on a CPU with
BF16 runs the CPU plugin's default, BF16: the config says so in a comment), ``PERFORMANCE_HINT``
and ``NUM_STREAMS`` from the arguments.

Batching follows the model: a fixed batch N gives ``max_batch_size: 0`` with full dims
``[N, 3, H, W]`` (Triton does not batch it); a dynamic batch gives ``max_batch_size`` (at most the
engine profile's maximum) with dims without the batch, plus ``dynamic_batching {}``.
The config text is written by hand (no tritonclient needed) and checked in the tests by parsing it
with Triton's own protobuf definitions.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from .card import SUFFIX_KINDS, read_card, sidecar_path
from .errors import UserError
from .utils import (atomic_write_json, atomic_write_text, clean_stale_tmp, mkdirs, output_error, rmdirs_if_empty,
                    tmp_name)

TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "bfloat16": "TYPE_BF16",
                 "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32",
                 "int64": "TYPE_INT64", "bool": "TYPE_BOOL"}
KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU", "auto": "KIND_AUTO"}
DEFAULT_MAX_BATCH = 8


#: model kind (pspnet_deploy.card.SUFFIX_KINDS) -> the kind Triton serves it as here
SERVED = {"onnx": "onnx", "tensorrt": "engine", "openvino": "openvino"}
#: the file name Triton's backend loads, per served kind
MODEL_FILES = {"onnx": "model.onnx", "engine": "model.plan", "openvino": "model.xml"}


def _model_kind(path: Path, kind: str | None) -> str:
    if kind is not None:
        if kind not in ("onnx", "engine", "openvino"):
            raise UserError(f"kind must be 'onnx', 'engine' or 'openvino', got {kind!r}")
        return kind
    served = SERVED.get(SUFFIX_KINDS.get(path.suffix.lower()))
    if served is None:
        raise UserError(f"{path}: Triton serves .onnx, .engine or .xml (OpenVINO) files here, not "
                        f"{path.suffix.lower() or 'this file'}")
    return served


def safe_name(name: str) -> str:
    out = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._-")
    if not out:
        raise UserError(f"model name {name!r} has no usable characters; pass --name")
    return out


_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def model_name(model_path: str | Path, name: str | None = None) -> str:
    """The repository name of a model: ``name`` exactly as given (refused, not rewritten, when it is
    not a plain folder name Triton accepts), else ``pspnet_<file stem>`` made safe."""
    if name is None:
        return safe_name(f"pspnet_{Path(model_path).stem.replace('.', '_')}")
    if not _NAME_RE.match(name) or name in (".", ".."):
        raise UserError(f"--name {name!r} is not a plain model name (letters, digits, '_', '.', '-'; no '/' or leading "
                        f"'.'); Triton serves the folder under this name, so choose one like pspnet_camvid")
    return name


def model_dirs(repo_dir: str | Path, name: str, version: int = 1) -> tuple[Path, Path]:
    """(``<repo>/<name>``, ``<repo>/<name>/<version>``): the folders a repository write fills and replaces."""
    model_dir = Path(repo_dir) / name
    return model_dir, model_dir / str(version)


def _model_info(path: Path) -> dict:
    """IO, card facts, external data files and batch limits of the model, from its card."""
    card = read_card(path)
    # a foreign ONNX (no pspnet metadata) would give clients no classes or preprocessing
    card.require("preprocess", "classes", "palette")
    meta = {**card.meta, **card.model_facts(), "precision": card.precision}
    info = {"io": {"inputs": card.inputs, "outputs": card.outputs}, "meta": meta,
            "external": sorted(os.path.relpath(f, path.parent.resolve()) for f in card.files
                               if Path(f) != path.resolve())}
    if card.kind == "onnx":  # ONNX Runtime takes any batch: the export's range is only the default max_batch_size
        info.update(max_batch=None, default_max_batch=card.batch_range[2] if card.batch_range else None)
    else:  # an engine's profile is a hard limit (an OpenVINO IR has none)
        if card.kind == "tensorrt":
            from .engine.sidecar import check_engine_file

            check_engine_file(path, card.sidecar)  # a truncated or replaced engine is not packaged
        rng = card.batch_range
        info.update(max_batch=rng[2] if rng else None, min_batch=rng[0] if rng else None, sidecar=card.sidecar)
    if card.kind == "openvino":  # the .bin is copied as model.bin; the serving CPU and OpenVINO are not checked here
        from .engine.sidecar import check_engine_file

        check_engine_file(path, card.sidecar, what="IR")
        info["external"] = []
    return info


def _dtype(path: Path, t: dict) -> str:
    try:
        return TRITON_DTYPES[t["dtype"]]
    except KeyError:
        raise UserError(f"{path}: tensor {t['name']} has type {t['dtype']}, which Triton cannot serve") from None


def _dims(shape) -> list[int]:
    return [int(d) if isinstance(d, int) else -1 for d in shape]


def _quote(s: str) -> str:
    return json.dumps(str(s))  # a JSON string is a valid protobuf text-format string


def render_config(name: str, kind: str, inputs: list[dict], outputs: list[dict], max_batch_size: int,
                  instances: int, instance_kind: str, dynamic_batching: bool,
                  parameters: dict[str, str] | None = None, comments: list[str] | None = None) -> str:
    """config.pbtxt text. ``inputs``/``outputs``: name, data_type (TYPE_*), dims (without batch if batching)."""
    lines = [f"# {c}" for c in comments or []] + [f"name: {_quote(name)}"]
    if kind == "openvino":
        lines += ['backend: "openvino"', 'default_model_filename: "model.xml"']
    elif kind == "onnx":
        lines += ['platform: "onnxruntime_onnx"', 'backend: "onnxruntime"', 'default_model_filename: "model.onnx"']
    else:
        lines += ['platform: "tensorrt_plan"', 'backend: "tensorrt"', 'default_model_filename: "model.plan"']
    lines.append(f"max_batch_size: {int(max_batch_size)}")
    for section, tensors in (("input", inputs), ("output", outputs)):
        lines.append(f"{section} [")
        body = []
        for t in tensors:
            body.append("  {\n"
                        f"    name: {_quote(t['name'])}\n"
                        f"    data_type: {t['data_type']}\n"
                        f"    dims: [ {', '.join(str(d) for d in t['dims'])} ]\n"
                        "  }")
        lines.append(",\n".join(body))
        lines.append("]")
    lines.append("instance_group [\n  {\n"
                 f"    count: {int(instances)}\n    kind: {instance_kind}\n" + "  }\n]")
    if dynamic_batching and max_batch_size > 0:
        lines.append("dynamic_batching { }")
    for key, value in (parameters or {}).items():
        lines.append("parameters: {\n"
                     f"  key: {_quote(key)}\n  value: {{ string_value: {_quote(value)} }}\n" + "}")
    return "\n".join(lines) + "\n"


def write_triton_repo(model_path: str | Path, repo_dir: str | Path, name: str | None = None,
                      max_batch: int | None = None, instances: int = 1, kind: str | None = None,
                      instance_kind: str | None = None, version: int = 1, dynamic_batching: bool = True,
                      force: bool = False, performance_hint: str = "LATENCY", streams: int | str | None = None) -> dict:
    """Write ``<repo>/<name>/`` for Triton; returns the paths and the batching chosen.

    ``kind``: "onnx" or "engine" (from the file suffix when None). ``max_batch``: for a model with a
    dynamic batch (default: the engine profile's maximum, or the maximum of the export's
    ``--dynamic-batch`` range, else 8); an error for a fixed-batch model unless it equals that batch. ``instance_kind``: gpu, cpu or auto (default gpu for engines, auto
    for ONNX). An existing version folder is replaced only with ``force``.
    """
    path = Path(model_path)
    if not path.is_file():
        raise UserError(f"{path}: model file not found")
    kind = _model_kind(path, kind)
    if instances < 1:
        raise UserError(f"--instances must be >= 1, got {instances}")
    if version < 1:
        raise UserError(f"--version must be >= 1, got {version}")
    ik = instance_kind or ("gpu" if kind == "engine" else "cpu" if kind == "openvino" else "auto")
    if ik not in KINDS:
        raise UserError(f"instance kind must be gpu, cpu or auto, got {ik!r}")
    if kind == "engine" and ik == "cpu":
        raise UserError("TensorRT engines run on GPUs only; use --instance-kind gpu")
    info = _model_info(path)
    mb, tensors = _batching(path, info, max_batch)
    name = model_name(path, name)
    params, comments = _openvino_parameters(info, performance_hint, streams) if kind == "openvino" else (None, None)
    text = render_config(name, kind, tensors["inputs"], tensors["outputs"], mb, instances, KINDS[ik],
                         dynamic_batching, params, comments)
    model_dir, vdir = model_dirs(repo_dir, name, version)
    if vdir.exists() and not force:
        raise UserError(f"{vdir}: version {version} of model {name!r} exists; pass --force to replace it or "
                        f"--version {version + 1}")
    _write_version(path, kind, info, model_dir, vdir, version)
    atomic_write_text(model_dir / "config.pbtxt", text)
    meta = info["meta"]
    client = {k: meta[k] for k in ("classes", "palette", "ignore_index", "preprocess", "output_kind", "precision",
                                   "input_kind", "input_channel_order")
              if k in meta}
    client.update({"source": str(path), "kind": kind, "max_batch_size": mb,
                   "input": tensors["inputs"][0]["name"], "output": tensors["outputs"][0]["name"]})
    atomic_write_json(model_dir / "pspnet.json", client)
    return {"name": name, "model_dir": str(model_dir), "config": str(model_dir / "config.pbtxt"),
            "model_file": str(vdir / MODEL_FILES[kind]),
            "kind": kind,
            "max_batch_size": mb, "instances": instances, "instance_kind": KINDS[ik], "version": version}


def _batching(path: Path, info: dict, max_batch: int | None) -> tuple[int, dict]:
    """Triton's ``max_batch_size`` for the model (0: a fixed batch Triton cannot batch) and the
    config's input and output tensors (without the batch dimension when Triton batches)."""
    io = info["io"]
    if len(io["inputs"]) != 1 or not io["outputs"]:
        raise UserError(f"{path}: expected one input and at least one output, found {len(io['inputs'])} inputs and "
                        f"{len(io['outputs'])} outputs")
    batch_dim = io["inputs"][0]["shape"][0] if io["inputs"][0]["shape"] else None
    dynamic = not isinstance(batch_dim, int) or batch_dim == -1
    if dynamic:
        limit = info.get("max_batch")
        mb = int(max_batch) if max_batch is not None else (limit or info.get("default_max_batch") or DEFAULT_MAX_BATCH)
        if mb < 1:
            raise UserError(f"--max-batch must be >= 1, got {mb}")
        if limit is not None and mb > limit:
            raise UserError(f"{path}: engine profile accepts batches up to {limit}, --max-batch {mb} is larger; "
                            f"rebuild with --batch 1 {mb} {mb} or lower --max-batch")
        if info.get("min_batch") not in (None, 1):
            raise UserError(f"{path}: engine profile's smallest batch is {info['min_batch']}; Triton sends batches "
                            f"from 1, rebuild with --batch 1 OPT MAX")
        strip = True
    else:
        if max_batch not in (None, 0, batch_dim):
            raise UserError(f"{path}: model has a fixed batch of {batch_dim}, so Triton cannot batch it "
                            f"(max_batch_size 0); re-export with --dynamic-batch to serve --max-batch {max_batch}")
        mb, strip = 0, False
    tensors = {}
    for section in ("inputs", "outputs"):
        tensors[section] = []
        for t in io[section]:
            dims = _dims(t["shape"])
            if strip:
                if not dims:
                    raise UserError(f"{path}: tensor {t['name']} has no batch dimension")
                dims = dims[1:]
            tensors[section].append({"name": t["name"], "data_type": _dtype(path, t), "dims": dims})
    return mb, tensors


def _openvino_parameters(info: dict, performance_hint: str, streams) -> tuple[dict, list[str]]:
    """The OpenVINO backend's parameters (performance hint, streams, BF16) and the config's comments."""
    if str(performance_hint).upper() not in ("LATENCY", "THROUGHPUT"):
        raise UserError(f"--performance-hint must be LATENCY or THROUGHPUT, got {performance_hint!r}")
    params = {"PERFORMANCE_HINT": str(performance_hint).upper()}
    if streams is not None:
        params["NUM_STREAMS"] = str(streams).upper()
    prec = info["sidecar"]["precision"]
    if prec == "bf16":
        params["HINT_BF16"] = "YES"
    comments = [f"OpenVINO IR, {prec.upper()} (pspnet-deploy sidecar model.xml.json)"]
    if prec != "bf16":
        comments.append("Triton's OpenVINO backend cannot ask for f32: on a CPU with BF16 (AVX-512 BF16 / AMX) "
                        "the CPU plugin runs float layers in BF16 by default")
    return params, comments


def _write_version(path: Path, kind: str, info: dict, model_dir: Path, vdir: Path, version: int) -> None:
    """The version folder with the model file and what it needs (weights, external data, sidecar),
    assembled under a temporary name and renamed into place (an old version replaced only then)."""
    created: list[Path] = []
    try:
        created = mkdirs(model_dir)
        clean_stale_tmp(model_dir)
        tmp = Path(tempfile.mkdtemp(prefix=tmp_name(vdir)[0], dir=model_dir))
    except OSError as e:
        rmdirs_if_empty(created)
        raise output_error(model_dir, e) from e
    try:
        shutil.copy2(path, tmp / MODEL_FILES[kind])
        if kind == "openvino":
            shutil.copy2(path.with_suffix(".bin"), tmp / "model.bin")
            shutil.copy2(path.with_name(path.name + ".json"), tmp / "model.xml.json")
        for rel in info["external"]:
            src = path.parent / rel
            if not src.is_file():
                raise UserError(f"{path}: external data file {rel} not found next to it; copy it there or re-export")
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tmp / rel)
        if kind == "engine":
            shutil.copy2(sidecar_path(path), tmp / "model.plan.json")
        os.chmod(tmp, 0o755)
        if vdir.exists():
            old = model_dir / f".{version}.old"
            shutil.rmtree(old, ignore_errors=True)
            vdir.rename(old)
            tmp.rename(vdir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(vdir)
    except OSError as e:
        raise output_error(vdir, e) from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if not vdir.exists():
            rmdirs_if_empty(created)
