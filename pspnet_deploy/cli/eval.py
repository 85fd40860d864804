"""pspnet-eval: accuracy of a model file (.pt, .onnx, .engine) on a dataset split."""
from __future__ import annotations

import sys
from pathlib import Path

from ..utils import atomic_write_json
from .common import add_window_args, apply_test_time, check_window_args, make_parser, run, size_arg

PROG = "pspnet-eval"


def build_parser():
    p = make_parser(PROG, "Confusion-matrix mIoU, pixel accuracy and per-class IoU of a model on a dataset split.")
    p.add_argument("model", help="checkpoint (.pt), ONNX (.onnx) or TensorRT engine (.engine)")
    p.add_argument("--data", required=True, help="dataset folder or synthetic[:SEED]")
    p.add_argument("--split", default="val")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="model input size (.pt only; ONNX and engines have theirs fixed)")
    p.add_argument("--limit", type=int, default=None, help="first N images only")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch / onnxruntime")
    add_window_args(p)
    p.add_argument("--json", default=None, help="write the results here as JSON")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv=None) -> int:
    from ..card import SUFFIX_KINDS
    from ..errors import UserError
    from ..sliding import describe
    from ..runfiles import RunFiles
    from ..utils import check_device

    parser = build_parser()
    a = parser.parse_args(argv)
    # cheap checks before torch is imported or a model loaded
    if a.limit is not None and a.limit <= 0:
        raise UserError(f"--limit must be positive, got {a.limit}")
    if a.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {a.batch_size}")
    if a.threads is not None and a.threads < 1:
        raise UserError(f"--threads must be at least 1, got {a.threads}")
    check_window_args(a, parser)
    check_device(a.device, allow_auto=False)
    size = size_arg(a.input_size, batch=a.batch_size)
    if size is not None and SUFFIX_KINDS.get(Path(a.model).suffix.lower()) != "torch":
        raise UserError("--input-size applies to .pt checkpoints only; ONNX and engine sizes are fixed at export")
    from ..card import read_card

    card = read_card(a.model)  # read once: the test-time record, the size check and the runner use it
    size = apply_test_time(a, size, card=card)
    card.check_size(size, batch=a.batch_size)  # its bounds and memory, times the batch
    RunFiles().read_model(a.model).read_dir(a.data, "--data dataset").write(a.json, "--json report").check()

    import torch

    from ..data import open_dataset
    from ..evaluate import evaluate
    from ..metrics import format_table
    from ..runners import RunnerOptions, load_runner

    if a.threads:
        torch.set_num_threads(a.threads)
    with load_runner(a.model, RunnerOptions(device=a.device, threads=a.threads or None, input_size=size),
                     card=card) as runner:
        ds = open_dataset(a.data, a.split)
        predict = None
        if a.mode == "slide" or a.flip or a.resize:
            from ..sliding import make_predictor

            predict = make_predictor(mode=a.mode, flip=a.flip, stride=a.stride, scales=a.scales, resize=a.resize)
        res = evaluate(runner, ds, limit=a.limit, batch_size=a.batch_size, progress=not a.no_progress, predict=predict)
        res["model"] = runner.describe()
    res["data"] = {"path": str(a.data), "split": a.split, "mode": a.mode, "flip": a.flip, "scales": list(a.scales),
                   "test_time": a.test_time, "stride": a.stride, "resize": a.resize}
    print(format_table(res, f"{a.model} on {a.data} [{a.split}], {res['num_images']} images, "
                            f"{describe(a.mode, a.flip, a.scales)}"))
    if a.json:
        atomic_write_json(a.json, res)
    return 0


def entry() -> None:
    sys.exit(run(PROG, main))


if __name__ == "__main__":
    entry()
