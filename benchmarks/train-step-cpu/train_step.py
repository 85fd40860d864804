"""Time one training step of the reference recipe in FP32 and under the autocast precision that
``pspnet-train --amp auto`` picks on this CPU (BF16 where AVX-512 BF16 / AMX-BF16 exist).

    python benchmarks/train-step-cpu/train_step.py --threads 2 --steps 12 --out benchmarks/train-step-cpu

The step is the one pspnet-train runs (forward with the auxiliary head, main + 0.4 x aux cross
entropy, backward, SGD), batch 4 of random 256x256 crops, PSPNet-ResNet18 at output stride 16 and 8.
Writes result.json and result.md with the machine, its ISA features and the versions.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12, help="timed steps per row (after 2 warm-up steps)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--out", default=str(Path(__file__).parent))
    a = ap.parse_args()

    import torch
    import torch.nn.functional as F

    from pspnet_deploy.machine import environment
    from pspnet_deploy.model import PSPNet
    from pspnet_deploy.train import autocast_dtype
    from pspnet_deploy.utils import atomic_write_json, atomic_write_text

    torch.set_num_threads(a.threads)
    auto = autocast_dtype(torch.device("cpu"), "auto")
    rows = []
    for os_ in (16, 8):
        for dtype in [None] + ([auto] if auto is not None else []):
            torch.manual_seed(0)
            net = PSPNet(num_classes=11, backbone="resnet18", output_stride=os_)
            net.train()
            opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
            x = torch.randn(a.batch, 3, a.crop, a.crop)
            y = torch.randint(0, 11, (a.batch, a.crop, a.crop))
            times = []
            for i in range(a.steps + 2):
                t0 = time.perf_counter()
                with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                    out, aux = net(x)
                    loss = F.cross_entropy(out.float(), y) + 0.4 * F.cross_entropy(aux.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if i >= 2:
                    times.append(time.perf_counter() - t0)
            rows.append({"output_stride": os_, "precision": str(dtype).replace("torch.", "") if dtype else "float32",
                         "median_s": statistics.median(times), "min_s": min(times), "steps": len(times)})
            print(rows[-1], flush=True)
    for r in rows:
        base = next(b for b in rows if b["output_stride"] == r["output_stride"] and b["precision"] == "float32")
        r["vs_fp32"] = r["median_s"] / base["median_s"]
    env = environment(a.threads, "cpu")
    out = Path(a.out)
    atomic_write_json(out / "result.json", {"settings": vars(a), "autocast_auto": str(auto), "rows": rows,
                                            "environment": env})
    lines = ["# Training step time, FP32 vs `--amp auto`", "",
             f"CPU {env['cpu']}, ISA {' '.join(env['isa']) or 'none of note'}, {a.threads} threads, "
             f"torch {env['versions'].get('torch')}, load average at start {env.get('load_average_at_start')}; "
             f"batch {a.batch} x 3 x {a.crop} x {a.crop}, PSPNet-ResNet18, main + 0.4 aux loss, SGD. "
             f"Median of {a.steps} steps after 2 warm-up steps. `--amp auto` here: "
             f"{str(auto).replace('torch.', '') if auto else 'FP32 (no native BF16)'}.", "",
             "| output stride | precision | median s/step | min s/step | vs FP32 |", "|---:|---|---:|---:|---:|"]
    lines += [f"| {r['output_stride']} | {r['precision']} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['vs_fp32']:.2f}x |"
              for r in rows]
    lines += ["", "Reproduce: `python benchmarks/train-step-cpu/train_step.py --threads 2 --steps 12`", ""]
    atomic_write_text(out / "result.md", "\n".join(lines))


if __name__ == "__main__":
    main()
