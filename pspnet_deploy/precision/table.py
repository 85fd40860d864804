"""The calibration table: ``<int8 model>.calib.json`` beside the INT8 ONNX, the per-tensor ranges it
was made with (``amax`` and ``scale = amax / 127``), the images, method and the plan: the nodes kept
out of INT8, their precision (``fallback``) and whether biases were corrected. A later run reuses it
with ``--calib-table`` instead of images and gets the same plan unless it says otherwise
(:func:`table_plan`).
"""
from __future__ import annotations

from ..card import TABLE_FORMAT, TABLE_VERSION, read_calibration_table, table_path_for  # the contract reads
from .ranges import NUM_BINS

__all__ = ["TABLE_FORMAT", "TABLE_VERSION", "table_path_for", "read_calibration_table", "make_table", "table_plan"]


def make_table(method: str, amax: dict, calib_info: dict, src, placement: str, percentile: float,
               fp32_nodes: list[str], pool_nodes: list[str], fallback: str = "fp32",
               bias_correction: bool = False) -> dict:
    """The table document; ``src``: the :class:`~pspnet_deploy.precision.calibrate.SourceModel`."""
    return {
        "format": TABLE_FORMAT, "version": TABLE_VERSION, "method": method,
        "percentile": percentile if method == "percentile" else None, "num_bins": NUM_BINS,
        "scale_rule": "scale = amax / 127, zero point 0 (symmetric INT8)",
        "images": calib_info, "source_onnx": src.path.name, "source_onnx_sha256": src.sha256,
        "preprocess": src.preprocess.to_dict(), "placement": placement, "fp32_nodes": list(fp32_nodes),
        "fallback": fallback, "bias_correction": bool(bias_correction),
        "static_pool_nodes": list(pool_nodes),
        "tensors": {t: {"amax": a, "scale": a / 127.0} for t, a in sorted(amax.items())},
    }



def table_plan(table: dict) -> dict:
    """What a reused table brings besides its ranges: ``fp32_nodes`` (kept out of INT8), ``fallback``
    (their precision) and ``bias_correction``. Tables written before these were recorded give
    the defaults (no correction, FP32 fallback) and their FP32 nodes."""
    nodes = table.get("fp32_nodes") or []
    return {"fp32_nodes": [str(n) for n in nodes], "fallback": str(table.get("fallback") or "fp32"),
            "bias_correction": bool(table.get("bias_correction", False))}
