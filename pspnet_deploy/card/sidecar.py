"""The sidecar format (``<engine>.json`` beside a TensorRT engine or an OpenVINO IR): its reader
(written by :mod:`pspnet_deploy.engine.sidecar`)."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from .names import SIDECAR_KINDS, SUFFIX_KINDS, sidecar_path
from .schema import SIDECAR_FORMAT, SIDECAR_SECTIONS, SIDECAR_VERSION, ModelCard, _card_from_meta

def read_sidecar_json(model_path: str | Path, rebuild_hint: str | None = None) -> dict:
    """The sidecar of a compiled model file, with its format, version and sections checked.

    UserError (one line) for a missing model file, a missing, unreadable or foreign sidecar, or a
    section of the wrong type. Backend-specific checks (TensorRT version, GPU) are the backend's.
    """
    model_path = Path(model_path)
    sc = sidecar_path(model_path)
    flags = " --backend openvino" if SUFFIX_KINDS.get(model_path.suffix.lower()) == "openvino" else ""
    hint = rebuild_hint or f"rebuild it with pspnet-build-engine MODEL.onnx{flags} --engine {model_path}"
    if not model_path.is_file():
        raise UserError(f"{model_path}: engine file not found")
    if not sc.is_file():
        raise UserError(f"{model_path}: no sidecar {sc.name} next to it, so the runtime version, device and model "
                        f"metadata it was built for are unknown; {hint}")
    try:
        data = json.loads(sc.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{sc}: sidecar is not valid JSON ({type(e).__name__}); {hint}") from e
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise UserError(f"{sc}: not a pspnet-deploy engine sidecar; {hint}")
    version = data.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise UserError(f"{sc}: sidecar version {version!r} is not a number; {hint}")
    if version > SIDECAR_VERSION:
        raise UserError(f"{sc}: sidecar version {version} is newer than this toolkit reads ({SIDECAR_VERSION}); "
                        f"upgrade pspnet-deploy")
    backend = SUFFIX_KINDS.get(model_path.suffix.lower())
    for key in SIDECAR_SECTIONS + ((backend,) if backend in data or backend in SIDECAR_KINDS else ()):
        if not isinstance(data.get(key), dict):
            raise UserError(f"{sc}: sidecar has no {key!r} section; {hint}")
    io = data["io"]
    for key in ("inputs", "outputs"):
        if not isinstance(io.get(key, []), list):
            raise UserError(f"{sc}: sidecar io.{key} is malformed ({type(io.get(key)).__name__}, expected a list); "
                            f"{hint}")
    prof = io.get("profile")
    if prof is not None and not (isinstance(prof, dict) and all(
            isinstance(prof.get(k), list) and prof[k] and all(isinstance(v, int) for v in prof[k])
            for k in ("min", "opt", "max"))):
        raise UserError(f"{sc}: sidecar io.profile is malformed (expected min/opt/max shapes); {hint}")
    eng = data["engine"]
    size = eng.get("size")
    if "size" in eng and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise UserError(f"{sc}: sidecar engine.size is malformed ({size!r}); {hint}")
    if "sha256" in eng and not isinstance(eng["sha256"], str):
        raise UserError(f"{sc}: sidecar engine.sha256 is malformed ({eng['sha256']!r}); {hint}")
    return data


def _read_sidecar_card(path: Path) -> ModelCard:
    sc = read_sidecar_json(path)
    meta = dict(sc.get("pspnet_metadata") or {})
    meta.update(sc["model"])
    io = sc["io"]
    inputs, outputs = list(io.get("inputs", [])), list(io.get("outputs", []))
    files = [str(path.resolve())]
    weights = sc["engine"].get("weights")  # a file the engine needs next to it (an OpenVINO IR's .bin)
    if isinstance(weights, dict) and isinstance(weights.get("file"), str):
        files.append(str(path.resolve().with_name(Path(weights["file"]).name)))
    fixed = rng = None
    prof = io.get("profile")
    if prof:
        rng = (prof["min"][0], prof["opt"][0], prof["max"][0])
    elif inputs and inputs[0].get("shape") and isinstance(inputs[0]["shape"][0], int) and inputs[0]["shape"][0] > 0:
        fixed = inputs[0]["shape"][0]
    card = _card_from_meta(path, SUFFIX_KINDS[path.suffix.lower()], meta, precision=sc.get("precision"), inputs=inputs, outputs=outputs,
                           fixed_batch=fixed, batch_range=rng, files=files, sidecar=sc)
    if card.static_size:  # built at one fixed size from a dynamic-shape ONNX (--static-size): static
        card.size_range = None
    onnx = sc.get("onnx") if isinstance(sc.get("onnx"), dict) else {}
    card.provenance.update({"engine_sha256": sc["engine"].get("sha256"), "onnx_path": onnx.get("path"),
                            "onnx_sha256": onnx.get("sha256"), "source_onnx_sha256": onnx.get("source_sha256")})
    return card

