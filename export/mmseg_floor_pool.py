"""A converted mmseg PSPNet-R50-d8 at 512x1024: this project's export vs mmseg's own forward, and
the same model with mmdeploy's floor-kernel average pool in place of the exact pyramid pooling.

    .venv/bin/python export/mmseg_floor_pool.py --threads 2     # writes export/mmseg_floor_pool.{md,json}

Needs the ``interop`` extra and the Makefile's ``INTEROP_NODEPS`` (mmsegmentation 1.2.2 on CPU).
Steps: mmseg's PSPNet from its shipped ``pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py`` with
random weights and BN statistics (no trained weights can be fetched here: the numbers measure the
conversion and the pooling, not accuracy), saved as mmengine does, converted by ``pspnet-convert``'s
code, exported by ``pspnet-export``'s code, run with ONNX Runtime. The reference is mmseg's
``EncoderDecoder.inference`` on the same normalised inputs (CamVid val images resized to 512x1024,
or random tensors if the data is absent). At 512x1024 the feature map is 64x128: bin 2 divides it,
bins 3 and 6 do not. mmdeploy's rewrite of ``adaptive_avg_pool2d`` (bins other than 1) is
``avg_pool2d(kernel=stride=int(size/bin), padding=0, ceil_mode=False)``; the "floor pool" model
is the converted model with exactly that in place of each non-global pool.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIG = "pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py"
SIZE = (512, 1024)


class FloorAvgPool(__import__("torch").nn.Module):
    """mmdeploy's replacement of ``adaptive_avg_pool2d``: one AvgPool, kernel = stride = floor(in / bins)."""

    def __init__(self, in_size, bins: int):
        import torch

        super().__init__()
        k = (in_size[0] // bins, in_size[1] // bins)
        self.pool = torch.nn.AvgPool2d(kernel_size=k, stride=k, padding=0, ceil_mode=False, count_include_pad=False)

    def forward(self, x):
        return self.pool(x)


def _inputs(preprocess, n: int, seed: int):
    import numpy as np

    data = ROOT.parent / "shared" / "data" / "camvid"
    if (data / "val").is_dir():
        from pspnet_deploy.data import open_dataset

        ds = open_dataset(str(data), "val")
        idx = np.linspace(0, len(ds) - 1, n).astype(int)
        idx = [int(i) for i in idx]
        return np.stack([preprocess(ds.load_image(i)) for i in idx]), f"CamVid val images {idx} resized to 512x1024"
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, *preprocess.input_size)).astype(np.float32), "random normal tensors"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def _metrics(ours, ref) -> dict:
    import numpy as np

    rng = float(ref.max() - ref.min())
    d = np.abs(ours - ref)
    return {"max_abs": float(d.max()), "max_abs_rel": float(d.max()) / rng, "mean_abs": float(d.mean()),
            "argmax_agreement": float((ours.argmax(1) == ref.argmax(1)).mean()), "logit_range": rng}


def _ort(path: Path, x, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return __import__("numpy").concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "export" / "mmseg_floor_pool"))
    a = ap.parse_args(argv)

    import numpy as np
    import onnxruntime
    import torch
    from torch import nn

    from pspnet_deploy.checkpoint import load_model, preprocess_of
    from pspnet_deploy.export import export_onnx
    from pspnet_deploy.interop import convert_checkpoint
    from pspnet_deploy.interop.mmseg_runtime import (build_mmseg_pspnet, import_mmseg_models, mmseg_inference,
                                                     save_like_mmengine)
    from pspnet_deploy.model import feature_size
    from pspnet_deploy.model.static_pool import make_static
    from pspnet_deploy.utils import versions

    torch.set_num_threads(a.threads)
    warnings.simplefilter("ignore")
    t0 = time.time()
    models = import_mmseg_models()
    import mmseg

    ref_model, cfg = build_mmseg_pspnet(models, CONFIG, seed=a.seed)
    classes = [f"class_{i}" for i in range(19)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_like_mmengine(ref_model, cfg, tmp / "iter_40000.pth", classes)
        convert_checkpoint(tmp / "iter_40000.pth", tmp / "psp_r50_d8.pt")
        model, meta = load_model(tmp / "psp_r50_d8.pt")
        pre = preprocess_of(meta)
        assert tuple(pre.input_size) == SIZE, pre.input_size
        x, source = _inputs(pre, a.images, a.seed)
        print(f"inputs: {source}", file=sys.stderr)

        ref = np.concatenate([mmseg_inference(ref_model, torch.from_numpy(x[i:i + 1])).numpy() for i in range(len(x))])
        print(f"mmseg forward done ({time.time() - t0:.0f} s)", file=sys.stderr)
        with torch.no_grad():
            ours_torch = np.concatenate([model(torch.from_numpy(x[i:i + 1])).numpy() for i in range(len(x))])
        onnx_path = tmp / "model.fp32.onnx"
        rep = export_onnx(tmp / "psp_r50_d8.pt", onnx_path, input_size=SIZE, verify=False, progress=False,
                          threads=a.threads)
        ours_onnx = _ort(onnx_path, x, a.threads)
        print(f"exact export done ({time.time() - t0:.0f} s)", file=sys.stderr)

        fh, fw = feature_size(SIZE[0]), feature_size(SIZE[1])
        floor = make_static(model, SIZE)
        floor.ppm.pools = nn.ModuleList(p if b == 1 else FloorAvgPool((fh, fw), b)
                                        for p, b in zip(floor.ppm.pools, floor.ppm.bins))
        floor_path = tmp / "model.floorpool.onnx"
        with torch.no_grad():
            floor_torch = np.concatenate([floor(torch.from_numpy(x[i:i + 1])).numpy() for i in range(len(x))])
            prog = torch.onnx.export(floor, (torch.from_numpy(x[:1]),), None, dynamo=True, opset_version=20,
                                     input_names=["input"], output_names=["logits"], verbose=False)
        prog.save(str(floor_path))
        floor_onnx = _ort(floor_path, x, a.threads)
        print(f"floor-pool export done ({time.time() - t0:.0f} s)", file=sys.stderr)

        # the pooled features themselves: exact adaptive pool vs the floor kernel, per bin
        with torch.no_grad():
            c4 = torch.cat([model.backbone(torch.from_numpy(x[i:i + 1]))[1] for i in range(len(x))])
        pools = []
        for b in model.ppm.bins:
            exact = nn.AdaptiveAvgPool2d(b)(c4)
            approx = exact if b == 1 else FloorAvgPool((fh, fw), b)(c4)
            k = (fh // b, fw // b)
            pools.append({"bin": b, "divides": fh % b == 0 and fw % b == 0, "floor_kernel": list(k),
                          "rows_cols_ignored": [fh - k[0] * b, fw - k[1] * b],
                          "max_abs": float((approx - exact).abs().max()),
                          "max_abs_rel": float((approx - exact).abs().max() / (exact.max() - exact.min()))})

    rows = {
        "this project, PyTorch (converted checkpoint)": _metrics(ours_torch, ref),
        "this project, exported ONNX (exact static pooling), ONNX Runtime": _metrics(ours_onnx, ref),
        "floor-kernel AvgPool (mmdeploy's rewrite), PyTorch": _metrics(floor_torch, ref),
        "floor-kernel AvgPool (mmdeploy's rewrite), ONNX Runtime": _metrics(floor_onnx, ref),
    }
    result = {"config": CONFIG, "input_size": list(SIZE), "feature_size": [fh, fw], "inputs": source,
              "weights": f"random (seed {a.seed}), BN statistics randomised", "rows": rows, "pools": pools,
              "onnx_nodes": rep["nodes"], "machine": {"cpu": _cpu_name(), "threads": a.threads},
              "versions": {**versions(), "mmsegmentation": mmseg.__version__, "onnxruntime": onnxruntime.__version__},
              "time_s": round(time.time() - t0, 1)}
    lines = ["# Converted mmseg PSPNet-R50-d8 at 512x1024: exact vs floor-kernel pyramid pooling", "",
             f"Config `{CONFIG}` (mmsegmentation {mmseg.__version__}), {result['weights']}; inputs: {source}; "
             f"feature map {fh}x{fw}. Reference: mmseg's `EncoderDecoder.inference`. "
             f"Written by `export/mmseg_floor_pool.py --threads {a.threads} --images {a.images}`.", "",
             "| model | max abs diff | max abs diff / logit range | mean abs diff | argmax agreement |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name, m in rows.items():
        lines.append(f"| {name} | {m['max_abs']:.3g} | {m['max_abs_rel']:.2e} | {m['mean_abs']:.3g} | "
                     f"{100 * m['argmax_agreement']:.3f}% |")
    lines += ["", "Pooled features (bin by bin, exact adaptive pool vs floor kernel):", "",
              "| bin | divides 64x128 | floor kernel | rows, cols never pooled | max abs diff | / feature range |",
              "| ---: | :---: | :---: | :---: | ---: | ---: |"]
    for p in pools:
        lines.append(f"| {p['bin']} | {'yes' if p['divides'] else 'no'} | {p['floor_kernel'][0]}x{p['floor_kernel'][1]} | "
                     f"{p['rows_cols_ignored'][0]}, {p['rows_cols_ignored'][1]} | {p['max_abs']:.3g} | {p['max_abs_rel']:.2e} |")
    lines += ["", f"Machine: {result['machine']['cpu']}, {a.threads} threads. Versions: "
              + ", ".join(f"{k} {v}" for k, v in result["versions"].items()) + f". Run time {result['time_s']} s.", ""]
    text = "\n".join(lines)
    Path(a.out + ".md").write_text(text)
    Path(a.out + ".json").write_text(json.dumps(result, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
