"""pspnet-debug: layer-by-layer comparison (and profile) of a deployed model against its reference."""
from __future__ import annotations

import sys
from pathlib import Path

from .common import make_parser, run

PROG = "pspnet-debug"


def build_parser():
    p = make_parser(PROG, "Where CANDIDATE diverges from REFERENCE, layer by layer in PSPNet's module names "
                          "(and, with --profile, where its time goes). Writes DIR/report.json, report.md and plots.")
    p.add_argument("reference", help="checkpoint (.pt) or FP32 ONNX")
    p.add_argument("candidate", help="FP32/FP16/INT8 Q/DQ ONNX, OpenVINO IR (.xml) or checkpoint (.pt)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--data", default=None, help="dataset folder or synthetic[:SEED] (default: generated images)")
    p.add_argument("--split", default="val")
    p.add_argument("--limit", type=int, default=None, help="images of --data, evenly spaced (default 4)")
    p.add_argument("--images", type=int, default=None, help="generated images when no --data (default 2)")
    p.add_argument("--atol", type=float, default=None, help="absolute tolerance per element (default by precision)")
    p.add_argument("--rtol", type=float, default=None, help="relative tolerance per element (default by precision)")
    p.add_argument("--max-outside", type=float, default=0.01,
                   help="a layer exceeds tolerance when more than this share of its elements is outside atol/rtol")
    p.add_argument("--amplification", type=float, default=2.0,
                   help="a layer originates error when its rel. L2 error is over this many times its inputs'")
    p.add_argument("--max-memory", type=float, default=1024, help="MiB of captured tensors held at once")
    p.add_argument("--profile", action="store_true", help="per-layer time on the candidate's backend")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch / onnxruntime / OpenVINO")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv=None) -> int:
    from ..errors import UserError
    from ..utils import check_device, check_output_dir

    a = build_parser().parse_args(argv)
    for name in ("reference", "candidate"):
        path = Path(getattr(a, name))
        if not path.is_file():
            raise UserError(f"{path}: {name} model file not found")
    if a.data is None and (a.limit is not None):
        raise UserError("--limit needs --data (without --data, use --images N for generated images)")
    if a.data is not None and a.images is not None:
        raise UserError("--images is for generated images; with --data use --limit N")
    for name in ("limit", "images", "threads"):
        v = getattr(a, name)
        if v is not None and v < 1:
            raise UserError(f"--{name} must be at least 1, got {v}")
    for name in ("atol", "rtol"):
        v = getattr(a, name)
        if v is not None and not v >= 0:
            raise UserError(f"--{name} must be >= 0, got {v}")
    if not 0 <= a.max_outside < 1:
        raise UserError(f"--max-outside must be in [0, 1), got {a.max_outside}")
    if not a.amplification >= 1:
        raise UserError(f"--amplification must be >= 1, got {a.amplification}")
    if not a.max_memory > 0:
        raise UserError(f"--max-memory must be positive (MiB), got {a.max_memory}")
    check_device(a.device, allow_auto=False)
    check_output_dir(a.out, "--out")
    if a.data is not None and not (str(a.data).startswith("synthetic") or Path(a.data).exists()):
        raise UserError(f"{a.data}: data folder not found; pass a dataset folder or 'synthetic'")

    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    from ..debug.layerwise import debug_models

    rep = debug_models(a.reference, a.candidate, a.out, data=a.data, split=a.split, limit=a.limit, images=a.images,
                       atol=a.atol, rtol=a.rtol, max_outside=a.max_outside, amplification=a.amplification,
                       device=a.device, threads=a.threads, max_memory_mb=a.max_memory, profile=a.profile,
                       progress=not a.no_progress)
    fd = rep["first_divergence"]
    if fd is None:
        print(f"no divergence: {len(rep['layers'])} layers within tolerance")
    else:
        print(f"first divergence: {fd['node']} (module {fd['module']}), rel L2 {fd['rel_l2']:.3g}, "
              f"{'amplified ' + format(fd['amplification'], '.3g') + 'x' if fd['amplified'] else 'accumulated'}")
    print(f"report: {Path(a.out) / 'report.md'}")
    return 0


def entry() -> None:
    sys.exit(run(PROG, main))


if __name__ == "__main__":
    entry()
