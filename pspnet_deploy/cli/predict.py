"""pspnet-predict: segment images, folders and videos with a .pt, .onnx or .engine model."""
from __future__ import annotations

import sys
from pathlib import Path

from .common import add_window_args, apply_test_time, check_window_args, make_parser, refuse_ignored, run

PROG = "pspnet-predict"


def build_parser():
    p = make_parser(PROG, "Write label maps (uint8 class ids), colour masks and optional overlays for images, "
                          "folders of images and videos. Outputs: DIR/labels/NAME.png, DIR/color/NAME.png, "
                          "DIR/overlay/NAME.png; a video gives DIR/video/NAME.color.mp4 (+ .overlay.mp4), and with "
                          "--video-frames also DIR/labels/NAME/000000.png per frame.")
    p.add_argument("model", help="checkpoint (.pt), ONNX (.onnx) or TensorRT engine (.engine)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders of images, or video files")
    p.add_argument("--output", "-o", required=True, help="output folder")
    add_window_args(p)
    p.add_argument("--overlay", action="store_true", help="also write the colour mask blended over the image")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the colour mask (0..1)")
    p.add_argument("--video-frames", action="store_true", help="for videos, also write per-frame label PNGs")
    p.add_argument("--max-frames", type=int, default=None, help="for videos, stop after N frames")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (engines always run on a GPU)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch / onnxruntime")
    p.add_argument("--cuda-graph", action="store_true", help="engines: replay inference as a CUDA graph")
    p.add_argument("--resume", action="store_true",
                   help="skip images whose outputs all exist already (continue a killed run)")
    p.add_argument("--progress", action="store_true", help="print progress to stderr")
    return p


def main(argv=None) -> int:
    from ..card import SUFFIX_KINDS
    from ..errors import UserError
    from ..sliding import describe
    from ..runfiles import RunFiles
    from ..utils import check_device

    parser = build_parser()
    a = parser.parse_args(argv)
    if a.threads is not None and a.threads < 1:
        raise UserError(f"--threads must be at least 1, got {a.threads}")
    if not 0.0 <= a.alpha <= 1.0:
        raise UserError(f"--alpha must be between 0 and 1, got {a.alpha}")
    if a.max_frames is not None and a.max_frames <= 0:
        raise UserError(f"--max-frames must be positive, got {a.max_frames}")
    check_window_args(a, parser)
    refuse_ignored(parser, a, [("alpha", not a.overlay, "without --overlay (it is the overlay's opacity)")])
    check_device(a.device, allow_auto=False)
    files = RunFiles().read_model(a.model)
    for i in a.inputs:
        files.read_dir(i, "input folder") if Path(i).is_dir() else files.read(i, "input")
    files.write_dir(a.output, "--output folder").check()
    if a.cuda_graph and SUFFIX_KINDS.get(Path(str(a.model)).suffix.lower()) != "tensorrt":
        raise UserError("--cuda-graph applies to TensorRT engines (.engine) only")
    from ..predict import Predictor, collect_inputs
    from ..runners import RunnerOptions, load_runner

    collect_inputs(a.inputs, exclude=a.output)  # bad inputs fail before the model loads
    size = apply_test_time(a, None)
    model = str(a.model)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    with load_runner(model, RunnerOptions(device=a.device, threads=a.threads or None, cuda_graph=a.cuda_graph,
                                          input_size=size)) as runner:
        res = Predictor(runner, a.output, mode=a.mode, flip=a.flip, stride=a.stride, scales=a.scales,
                        overlay=a.overlay, alpha=a.alpha, video_frames=a.video_frames, max_frames=a.max_frames,
                        progress=a.progress, resize=a.resize, resume=a.resume).run(a.inputs)
    parts = [f"{res.images} image{'s' if res.images != 1 else ''}"]
    if res.skipped:
        parts.append(f"{res.skipped} skipped (--resume: outputs already there)")
    if res.videos:
        parts.append(f"{res.videos} video{'s' if res.videos != 1 else ''} ({res.frames} frames)")
    print(f"{PROG}: segmented {', '.join(parts)} with {runner.backend} ({describe(a.mode, a.flip, a.scales)}); "
          f"wrote {len(res.files)} files under {a.output}")
    return 0


def entry() -> None:
    sys.exit(run(PROG, main))


if __name__ == "__main__":
    entry()
