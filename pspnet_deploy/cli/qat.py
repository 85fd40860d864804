"""pspnet-qat: quantization-aware fine-tuning that writes the same Q/DQ INT8 ONNX as pspnet-calibrate."""
from __future__ import annotations

import sys

from ..machine import AUTO_ON_OFF
from .common import make_parser, refuse_ignored, run

PROG = "pspnet-qat"


def build_parser():
    from ..precision.calib_data import DEFAULT_NUM_IMAGES
    from ..precision.ranges import DEFAULT_METHOD, METHODS

    p = make_parser(PROG, "Fine-tune a checkpoint with fake quantization matching what TensorRT executes (symmetric "
                          "INT8, zero points 0, weights per output channel, activations per tensor, the Q/DQ placement "
                          "of the calibrated file), starting from calibrated ranges; write the Q/DQ INT8 ONNX "
                          "(same format and metadata as pspnet-calibrate, plus a qat record), its .calib.json, and "
                          "OUT.qat-state.pt after every epoch (for --resume).")
    p.add_argument("checkpoint", help="PSPNet checkpoint (.pt) from pspnet-train / pspnet-convert")
    p.add_argument("--data", required=True, help="training dataset (also the calibration images unless --calib-table)")
    p.add_argument("--split", default="train", help="training split (split expressions allowed, e.g. 'train!0006R0')")
    p.add_argument("--output", "-o", required=True, help="INT8 ONNX to write (e.g. export/NAME/model.qat.int8.onnx)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--fp32-checkpoint", default=None, metavar="FILE",
                   help="also write the fine-tuned weights as a plain FP32 checkpoint (.pt), to compare QAT's INT8 "
                        "file against its own weights")
    p.add_argument("--calib-table", default=None,
                   help="start from the ranges (and FP32 nodes, placement) of a pspnet-calibrate .calib.json")
    p.add_argument("--calib-split", default=None, help="split to calibrate on (default: --split)")
    p.add_argument("--num-images", type=int, default=DEFAULT_NUM_IMAGES, help="calibration images")
    p.add_argument("--method", default=None, choices=list(METHODS),
                   help=f"calibration method for the start ranges (default {DEFAULT_METHOD}; with --calib-table, the "
                        f"table's)")
    p.add_argument("--input-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="export size (default: the checkpoint's)")
    p.add_argument("--input-kind", choices=["float", "uint8"], default="float",
                   help="what the INT8 file takes, as pspnet-export --input-kind: uint8 = N x H x W x 3 pixels, the "
                        "cast, mean/std and transpose in the graph (kept FP32); training is the same either way")
    p.add_argument("--channel-order", type=str.upper, choices=["RGB", "BGR"], default="RGB",
                   help="uint8 input: the pixels' channel order (RGB: the toolkit's image reader; BGR: cv2.imread)")
    p.add_argument("--output-kind", choices=["logits", "labels"], default="logits",
                   help="what the INT8 file gives, as pspnet-export --output-kind: labels = ArgMax in the graph")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4, help="SGD learning rate (poly decay); ranges use --range-lr")
    p.add_argument("--range-lr", type=float, default=None, help="learning rate of the activation ranges (default --lr)")
    p.add_argument("--crop", type=int, nargs=2, default=None, metavar=("H", "W"), help="training crop (default: export size)")
    p.add_argument("--max-steps-per-epoch", type=int, default=None)
    p.add_argument("--stop-after-epochs", type=int, default=None,
                   help="end this invocation after N epochs (state saved; continue with --resume)")
    p.add_argument("--bf16", default="auto", choices=AUTO_ON_OFF,
                   help="BF16 autocast: auto measures FP32 vs BF16 here for about a second and uses BF16 only if it "
                        "is at least 1.10x faster (recorded in the metadata); on: refused without AVX-512 BF16 / AMX")
    p.add_argument("--resume", default=None, help="continue from OUT.qat-state.pt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--cache-dir", default="calibration/cache")
    p.add_argument("--json", default=None, help="write the report here as JSON")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv=None) -> int:
    from pathlib import Path

    from ..card import qat_state_path, read_card, table_path_for
    from ..errors import UserError
    from ..runfiles import RunFiles
    from ..train_config import QATConfig, positive
    from ..utils import atomic_write_json, jsonable

    parser = build_parser()
    a = parser.parse_args(argv)
    refuse_ignored(parser, a, [("calib_split", a.calib_table is not None, "with --calib-table (its ranges are reused)"),
                               ("num_images", a.calib_table is not None, "with --calib-table (its ranges are reused)")])
    if a.channel_order != "RGB" and a.input_kind != "uint8":
        raise UserError("--channel-order applies to --input-kind uint8 (a float input is preprocessed by the caller)")
    cfg = QATConfig(data=a.data, split=a.split, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, range_lr=a.range_lr,
                    crop=list(a.crop) if a.crop else None, max_steps_per_epoch=a.max_steps_per_epoch, seed=a.seed,
                    threads=a.threads, bf16=a.bf16, stop_after_epochs=a.stop_after_epochs, progress=not a.no_progress)
    # the checks pspnet-train, pspnet-export and pspnet-calibrate make, before torch is imported or work starts
    cfg.validate()
    positive("num-images", a.num_images)
    if not str(a.output).lower().endswith(".onnx"):
        raise UserError(f"{a.output}: --output must be an .onnx file path (e.g. model.qat.int8.onnx)")
    if a.fp32_checkpoint is not None and not str(a.fp32_checkpoint).lower().endswith(".pt"):
        raise UserError(f"{a.fp32_checkpoint}: --fp32-checkpoint must be a .pt file (e.g. model.qat.fp32.pt)")
    if a.calib_table is not None and a.method is not None:
        from ..precision.table import read_calibration_table

        made_with = read_calibration_table(a.calib_table).get("method")
        if made_with != a.method:
            raise UserError(f"{a.calib_table}: the table's ranges were made with --method {made_with}, not {a.method}; "
                            f"drop --method to reuse them, or drop --calib-table to calibrate with {a.method}")
    if str(a.checkpoint).lower().endswith(".onnx"):  # e.g. a uint8/labels export: QAT needs its checkpoint
        _refuse_model_file(a.checkpoint)
    card = read_card(a.checkpoint, kind="torch")
    size = card.check_size(a.input_size)  # the export size: the model's bounds and memory
    card.check_size(a.crop or size, "--crop" if a.crop else "training crop (the export size)", batch=a.batch_size,
                    training=True)
    state = qat_state_path(a.output)
    files = RunFiles().read_model(a.checkpoint, "checkpoint").read_dir(a.data, "--data dataset")
    files.read(a.calib_table, "--calib-table")
    if a.resume is not None and Path(a.resume).resolve() != state.resolve():
        files.read(a.resume, "--resume state")  # (OUT's own state is continued, and rewritten, by design)
    files.write(a.output, "--output ONNX").also_writes(table_path_for(a.output), "calibration table")
    files.also_writes(state, "QAT state").write(a.fp32_checkpoint, "--fp32-checkpoint").write(a.json, "--json report")
    files.write_dir(a.cache_dir, "--cache-dir").check()

    from ..qat import run_qat

    rep = run_qat(a.checkpoint, a.output, cfg, calib_table=a.calib_table, calib_split=a.calib_split or a.split,
                  num_images=a.num_images, method=a.method, input_size=tuple(a.input_size) if a.input_size else None,
                  resume=a.resume, cache_dir=a.cache_dir, fp32_checkpoint=a.fp32_checkpoint,
                  input_kind=a.input_kind, channel_order=a.channel_order, output_kind=a.output_kind)
    if rep.get("output") is None:
        print(f"stopped after epoch {rep['stopped_after_epoch']}; continue with --resume {rep['state']}")
    else:
        q = rep["qdq"]
        print(f"wrote {rep['output']} (INT8 Q/DQ after QAT, {rep['placement']} placement: {rep['quantized_weights']} "
              f"INT8 weighted ops, {rep['quantized_activations']} learned activation ranges, zero points 0: "
              f"{q['all_zero_points_zero']}); table {rep['table']}; BF16 autocast "
              f"{'on' if rep['bf16']['used'] else 'off'} (CPU BF16: {rep['bf16']['cpu_has_bf16']}, ISA "
              f"{rep['bf16']['isa']}); input {rep['input_kind']}"
              + (f" ({rep['channel_order']})" if rep["input_kind"] == "uint8" else "") + f", output {rep['output_kind']}"
              + ("; TensorRT parser check: ok" if rep.get("parser_check") else "")
              + (f"; fine-tuned FP32 weights {rep['fp32_checkpoint']}" if rep.get("fp32_checkpoint") else ""))
    if a.json:
        atomic_write_json(a.json, jsonable(rep))
    return 0


def _refuse_model_file(path) -> None:
    """UserError naming the checkpoint an exported ONNX came from and the options that give the same
    input and output kinds after QAT."""
    from ..card import read_card
    from ..errors import UserError

    try:
        card = read_card(path, kind="onnx")
    except UserError:
        card = None
    flags = ""
    if card is not None:
        if card.input_kind == "uint8":
            flags += f" --input-kind uint8 --channel-order {card.input_channel_order}"
        if card.output_kind == "labels":
            flags += " --output-kind labels"
    src = (card.provenance.get("checkpoint") if card is not None else None) or "the checkpoint (.pt) it was exported from"
    qat = card.meta.get("qat") if card is not None else None
    if isinstance(qat, dict):  # a QAT file records the checkpoint it was fine-tuned from by hash (its export's is temporary)
        src = f"the checkpoint it was fine-tuned from (sha256 {str(qat.get('source_checkpoint_sha256'))[:12]}…)"
    raise UserError(f"{path}: is an ONNX model; pspnet-qat fine-tunes the PyTorch weights: pass {src}"
                    + (f" with{flags} to get the same pixels-in / labels-out file" if flags else ""))


def entry() -> None:
    sys.exit(run(PROG, main))


if __name__ == "__main__":
    entry()
