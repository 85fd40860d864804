"""Names: the one suffix-to-kind table and every artefact name a stage derives from another."""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError

#: the one suffix -> kind table (a new backend adds its suffixes here and a reader in READERS)
SUFFIX_KINDS = {".pt": "torch", ".pth": "torch", ".onnx": "onnx",
                ".engine": "tensorrt", ".plan": "tensorrt", ".trt": "tensorrt", ".xml": "openvino"}
#: bf16: an inference precision of an FP32 OpenVINO IR (recorded in its sidecar), no file format
PRECISIONS = ("fp32", "fp16", "bf16", "int8")

#: the kinds whose files carry a sidecar, each with its own section named after it
SIDECAR_KINDS = ("tensorrt", "openvino")


def model_kind(path: str | Path) -> str:
    """'torch', 'onnx', 'tensorrt' or 'openvino' from the file suffix; UserError for anything else."""
    p = Path(path)
    kind = SUFFIX_KINDS.get(p.suffix.lower())
    if kind is None:
        raise UserError(f"{p}: unknown model file type {p.suffix or '(none)'!r}; expected "
                        f"{', '.join(sorted(SUFFIX_KINDS))}")
    return kind


def strip_model_suffix(name: str) -> str:
    """``model.fp16.engine`` -> ``model.fp16`` (any suffix of :data:`SUFFIX_KINDS`)."""
    for suf in SUFFIX_KINDS:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def sidecar_path(model_path: str | Path) -> Path:
    """The sidecar of a compiled model file: ``model.fp16.engine`` -> ``model.fp16.engine.json``."""
    p = Path(model_path)
    return p.with_name(p.name + ".json")


# --------------------------------------------------------------------------------------------
# artefact names: every file name a stage derives from another lives here
# --------------------------------------------------------------------------------------------

def strip_precision(stem: str) -> str:
    """``model.fp16`` -> ``model`` (a trailing ``.<precision>`` of :data:`PRECISIONS`)."""
    for p in PRECISIONS:
        if stem.endswith("." + p):
            return stem[: -len(p) - 1]
    return stem


def variant_path(onnx_path: str | Path, precision: str) -> Path:
    """Where the ``precision`` variant of an ONNX goes: ``model.fp32.onnx`` -> ``model.int8.onnx``."""
    p = Path(onnx_path)
    return p.with_name(f"{strip_precision(p.stem)}.{precision}.onnx")


def default_engine_path(onnx_path: str | Path, precision: str, suffix: str = ".engine") -> Path:
    """``<name>.<precision><suffix>`` next to the ONNX (``.engine``; ``.xml`` for an OpenVINO IR)."""
    p = Path(onnx_path)
    return p.with_name(f"{strip_precision(p.stem)}.{precision}{suffix}")


def ir_weights_path(xml_path: str | Path) -> Path:
    """An OpenVINO IR's weights beside it: ``model.int8.xml`` -> ``model.int8.bin``."""
    return Path(xml_path).with_suffix(".bin")


def parity_report_path(onnx_path: str | Path) -> Path:
    """``model.fp32.onnx`` -> ``model.fp32.parity.json`` (beside the model)."""
    return Path(onnx_path).with_suffix(".parity.json")


def failed_report_path(onnx_path: str | Path) -> Path:
    """``model.fp32.onnx`` -> ``model.fp32.parity-failed.json``: the figures of a failed parity gate
    (no model is written then, and a report named like a good one's would contradict the old model)."""
    return Path(onnx_path).with_suffix(".parity-failed.json")


def table_path_for(output: str | Path) -> Path:
    """The calibration table of an INT8 ONNX: ``model.int8.onnx`` -> ``model.int8.calib.json``."""
    return Path(output).with_suffix(".calib.json")


def sensitivity_report_paths(output: str | Path) -> dict[str, Path]:
    """The accuracy-budget report of an INT8 ONNX: ``m.int8.onnx`` -> ``m.int8.sensitivity.{json,md,png}``."""
    base = Path(output).with_suffix("")
    return {k: base.with_name(f"{base.name}.sensitivity.{k}") for k in ("json", "md", "png")}


def qat_state_path(output: str | Path) -> Path:
    """pspnet-qat's resumable state beside its output: ``m.int8.onnx`` -> ``m.int8.qat-state.pt``."""
    return Path(output).with_suffix(".qat-state.pt")


def model_files(path: str | Path) -> list[Path]:
    """Every file a model consists of, the model file first: an ONNX's external data, a compiled
    model's sidecar and the weights file it names (an IR's ``.bin``). Best effort and cheap (no
    validation: a file that cannot be read is just itself here; its reader says what is wrong)."""
    p = Path(path)
    out = [p]
    kind = SUFFIX_KINDS.get(p.suffix.lower())
    if kind == "onnx" and p.is_file():
        try:
            import onnx

            m = onnx.load(str(p), load_external_data=False)
            for t in m.graph.initializer:
                if t.data_location == onnx.TensorProto.EXTERNAL:
                    for kv in t.external_data:
                        if kv.key == "location" and (p.parent / kv.value) not in out:
                            out.append(p.parent / kv.value)
        except Exception:  # noqa: BLE001 - not readable: the model's reader will say so
            pass
    elif kind in SIDECAR_KINDS:
        out.append(sidecar_path(p))
        if kind == "openvino":
            out.append(ir_weights_path(p))
    return out

