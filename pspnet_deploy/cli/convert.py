"""pspnet-convert: an mmsegmentation or hszhao/semseg PSPNet checkpoint -> this project's checkpoint.

Examples::

    pspnet-convert pspnet_r50-d8_512x1024_40k_cityscapes.pth --output models/psp_r50_cityscapes.pt
    pspnet-convert iter_80000.pth --output psp.pt --config pspnet_r18b-d8_4xb2-80k_cityscapes-512x1024.py
    pspnet-convert train_epoch_50.pth --from semseg --output psp50_voc.pt --config voc2012_pspnet50.yaml

The file is read without running code from it; the architecture comes from the checkpoint's
embedded config (mmengine ``meta['cfg']``, mmcv ``meta['config']``) or ``--config`` (read, never
executed); a checkpoint without one needs ``--config`` or ``--assume-defaults`` (recorded). A
``--config`` that disagrees with the embedded config on the forward pass is refused.
"""
from __future__ import annotations

import json
import sys

from .common import make_parser, run, size_arg

PROG = "pspnet-convert"


def build_parser():
    p = make_parser(PROG, "Convert an mmsegmentation or semseg PSPNet checkpoint into a pspnet-deploy checkpoint "
                          "(exact architecture, classes, palette, preprocessing) that every pspnet-* command reads.")
    p.add_argument("src", help="checkpoint to convert (.pth): mmsegmentation 0.x/1.x or hszhao/semseg")
    p.add_argument("--output", "-o", required=True, help="pspnet-deploy checkpoint to write (.pt)")
    p.add_argument("--from", dest="source", choices=["mmseg", "semseg"], default=None,
                   help="layout of SRC (default: detected from its weights)")
    p.add_argument("--config", default=None,
                   help="mmseg: Python config (a path, or the name of a config shipped with mmsegmentation); "
                        "semseg: its YAML config. Default: the config embedded in SRC, else the weights' shapes")
    p.add_argument("--assume-defaults", choices=["mmseg-d8", "semseg"], default=None,
                   help="a checkpoint without a config (a bare state dict, mmcv 0.x, every semseg file) converts only "
                        "with --config or this: mmseg-d8 = mmseg's pspnet_r50-d8 defaults (output stride 8, "
                        "align_corners False, bins 1-2-3-6, ImageNet RGB); semseg = semseg's fixed design. "
                        "Recorded in the checkpoint")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="inference size stored in the checkpoint (default: the config's crop size)")
    return p


def main(argv=None) -> int:
    from pathlib import Path

    from ..errors import UserError

    a = build_parser().parse_args(argv)
    if not Path(a.src).is_file():
        raise UserError(f"{a.src}: checkpoint not found")
    if a.config is not None and a.source != "semseg" and not Path(a.config).is_file():
        from ..interop.mmconfig import resolve_config_path

        resolve_config_path(a.config)  # one line if neither a file nor a shipped config's name
    size = size_arg(a.input_size)
    from ..runfiles import RunFiles

    files = RunFiles().read(a.src, "source checkpoint")
    if a.config is not None and Path(a.config).is_file():
        files.read(a.config, "--config")
    files.write(a.output, "--output checkpoint").check()

    from ..interop import convert_checkpoint

    summary = convert_checkpoint(a.src, a.output, source=a.source, config=a.config, input_size=size,
                                 assume_defaults=a.assume_defaults)
    for note in summary["notes"]:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    print(json.dumps({k: summary[k] for k in ("path", "source", "config", "num_classes", "input_size", "aux_head")}))
    return 0


def entry() -> None:
    sys.exit(run(PROG, main))


if __name__ == "__main__":
    entry()
