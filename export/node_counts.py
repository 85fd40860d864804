"""Node counts of our exported graph vs the dynamo exporter's plain output of the unmodified model.

    .venv/bin/python export/node_counts.py            # writes export/node_counts.md

PSPNet-ResNet18 (random init: counts do not depend on weights), 11 classes, at 360x480 and
512x1024. "Ours" is ``pspnet_deploy.export.export_onnx`` (exact static pooling, checks on, parity
off). "Plain dynamo" is ``torch.onnx.export(model, x, dynamo=True)`` of the same model with its
``nn.AdaptiveAvgPool2d`` pools. The TorchScript exporter (``dynamo=False``) is tried too.
Pyramid-pooling nodes are the nodes under ``ppm.pools.*`` (the pooling itself); PPM nodes are
everything under ``ppm`` (pooling, 1x1 conv stages, upsampling, concat).
"""
from __future__ import annotations

import argparse
import ast
import collections
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = [(360, 480), (512, 1024)]
CLASSES = 11


def _scopes(node) -> list[str]:
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                return [str(s) for s in ast.literal_eval(p.value)]
            except (ValueError, SyntaxError):
                return []
    return []


def _plain_counts(model, size) -> dict:
    import torch

    x = torch.zeros(1, 3, *size)
    t = time.time()
    with warnings.catch_warnings(), open(os.devnull, "w") as devnull:
        warnings.simplefilter("ignore")
        import contextlib

        with contextlib.redirect_stdout(devnull):
            prog = torch.onnx.export(model, (x,), None, dynamo=True, external_data=False, verbose=False)
    m = prog.model_proto
    pool = [n for n in m.graph.node if any(s.startswith("ppm.pools.") for s in _scopes(n))]
    ppm = [n for n in m.graph.node if "ppm" in _scopes(n)]
    ops = collections.Counter(n.op_type for n in m.graph.node)
    return {"total": len(m.graph.node), "pool": len(pool), "ppm": len(ppm),
            "gathers": sum(ops[k] for k in ("Gather", "GatherND", "GatherElements")),
            "shape_ops": sum(ops[k] for k in ("Shape", "ConstantOfShape", "Size", "Range")),
            "pool_ops": dict(collections.Counter(n.op_type for n in pool).most_common()),
            "opset": m.opset_import[0].version, "time_s": round(time.time() - t, 1)}


def _torchscript(model, size) -> str:
    import torch

    x = torch.zeros(1, 3, *size)
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as d:
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (x,), str(Path(d) / "m.onnx"), dynamo=False, opset_version=17)
        except Exception as e:  # noqa: BLE001 - we record what it says
            return f"fails: {type(e).__name__}: {str(e).splitlines()[0][:140]}"
        import onnx

        m = onnx.load(str(Path(d) / "m.onnx"))
        return f"succeeds: {len(m.graph.node)} nodes"


def _our_counts(ckpt: Path, size, d: Path) -> dict:
    import onnx

    from pspnet_deploy.export import export_onnx
    from pspnet_deploy.onnx_graph import static_pool_node_names

    t = time.time()
    out = d / f"ours_{size[0]}x{size[1]}.onnx"
    rep = export_onnx(ckpt, out, input_size=size, verify=False, progress=False)
    m = onnx.load(str(out))
    pool = static_pool_node_names(m)
    ppm = [n for n in m.graph.node if n.name.startswith("ppm")]
    ops = collections.Counter(n.op_type for n in m.graph.node)
    return {"total": len(m.graph.node), "pool": len(pool), "ppm": len(ppm),
            "gathers": sum(ops[k] for k in ("Gather", "GatherND", "GatherElements")),
            "shape_ops": sum(ops[k] for k in ("Shape", "ConstantOfShape", "Size", "Range")),
            "pool_ops": dict(collections.Counter(n.op_type for n in m.graph.node if n.name in set(pool)).most_common()),
            "modes": [p["mode"] for p in rep["static_pool"]["pools"]], "feature": rep["static_pool"]["feature_size"],
            "opset": m.opset_import[0].version, "time_s": round(time.time() - t, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "export" / "node_counts.md"))
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    import torch

    from pspnet_deploy.checkpoint import save_checkpoint
    from pspnet_deploy.data import Preprocess, default_palette
    from pspnet_deploy.model import PSPNet
    from pspnet_deploy.utils import atomic_write_text, versions

    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = PSPNet(CLASSES, "resnet18", output_stride=8, aux=False).eval()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        ckpt = d / "resnet18.pt"
        save_checkpoint(ckpt, model, {"classes": [f"c{i}" for i in range(CLASSES)], "palette": default_palette(CLASSES),
                                      "ignore_index": 255, "preprocess": Preprocess((360, 480)).to_dict()})
        for size in SIZES:
            print(f"{size}: ours ...", file=sys.stderr, flush=True)
            ours = _our_counts(ckpt, size, d)
            print(f"{size}: plain dynamo ...", file=sys.stderr, flush=True)
            plain = _plain_counts(model, size)
            ts = _torchscript(model, size)
            rows.append((size, ours, plain, ts))
    v = versions()
    lines = ["# Node counts: our export vs the plain dynamo export", "",
             "Generated by `export/node_counts.py` (PSPNet-ResNet18, output stride 8, bins 1/2/3/6, 11 classes, "
             "random init, batch 1, FP32).", "",
             f"torch {v.get('torch')}, onnx {v.get('onnx')}, onnxruntime {v.get('onnxruntime')}.", "",
             "| input | feature map | graph | opset | total nodes | pyramid pooling nodes | whole PPM nodes "
             "| Gather* | Shape/ConstantOfShape/Size/Range |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (h, w), ours, plain, _ in rows:
        feat = "x".join(map(str, ours["feature"]))
        lines.append(f"| {h}x{w} | {feat} | ours (static pooling: {', '.join(ours['modes'])}) | {ours['opset']} "
                     f"| {ours['total']} | {ours['pool']} | {ours['ppm']} | {ours['gathers']} | {ours['shape_ops']} |")
        lines.append(f"| {h}x{w} | {feat} | plain dynamo (AdaptiveAvgPool2d) | {plain['opset']} | {plain['total']} "
                     f"| {plain['pool']} | {plain['ppm']} | {plain['gathers']} | {plain['shape_ops']} |")
    lines += ["", "Pyramid pooling op mix:", ""]
    for (h, w), ours, plain, ts in rows:
        lines.append(f"- {h}x{w}: ours {ours['pool_ops']}; plain dynamo {plain['pool_ops']}")
    lines += ["", "TorchScript exporter (`dynamo=False`, opset 17) on the unmodified model:", ""]
    for (h, w), _, _, ts in rows:
        lines.append(f"- {h}x{w}: {ts}")
    lines.append("")
    atomic_write_text(a.out, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
