"""Quantization-aware training (QAT) that ends in the same Q/DQ INT8 ONNX calibration writes.

The placement is not decided here. QAT starts from a *calibrated* Q/DQ file (made by
:func:`pspnet_deploy.precision.calibrate.calibrate_onnx`, or from a ``--calib-table``), reads from
it which convolutions have INT8 weights, which activation tensor feeds each of them through a
``QuantizeLinear``/``DequantizeLinear`` pair and which residual Adds quantize their residual
input (:func:`plan_from_qdq`), and puts fake quantization at exactly those places in the PyTorch
model (:class:`QATModel`):

- weights: symmetric INT8 per output channel, ``scale = max|w_c| / 127`` recomputed every step
  (what the Q/DQ writer does with the BatchNorm-folded weight; BatchNorm is frozen during QAT, so
  per-channel quantization of the raw weight equals that of the folded one up to rounding);
- activations: symmetric INT8 per tensor, zero point 0, ``amax`` starting from the calibrated
  range and learned (LSQ-style straight-through gradient); one learned range per ONNX tensor, so
  a tensor read by two convolutions keeps one scale, as in the file;
- rounding half to even and saturation at +-127, as ``QuantizeLinear`` does.

Export writes the fine-tuned FP32 ONNX (:func:`pspnet_deploy.export.export_onnx`) and hands the
learned ranges, as a calibration table, to the same Q/DQ writer with the calibrated file's FP32
nodes: same placement, same format, same metadata (plus a ``qat`` record), TensorRT parser
check included.
"""
from __future__ import annotations

import copy
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .card import qat_state_path, safe_torch_load
from .train_config import QATConfig  # noqa: F401 - re-exported (checked before torch is imported)
from .errors import UserError
from .machine import bf16_decision, cpu_has_bf16
from .utils import atomic_path, check_output_file, nonfinite_loss_error, say, sha256_file, work_dir

__all__ = ["QATConfig", "QATPlan", "plan_from_qdq", "QATModel", "fake_quant", "run_qat"]

QMAX = 127


def fake_quant(x: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    """Symmetric INT8 fake quantization, zero point 0: ``clamp(round(x / s), -127, 127) * s`` with
    ``s = amax / 127``; straight-through for ``x`` inside the range, LSQ gradient for ``amax``.
    Computed in FP32 whatever autocast says."""
    dtype = x.dtype
    x = x.float()
    s = amax.float().clamp_min(1e-8) / QMAX
    xs = x / s
    r = xs + (torch.round(xs) - xs).detach()
    return (torch.clamp(r, -QMAX, QMAX) * s).to(dtype)


class ActQuant(nn.Module):
    """Per-tensor activation fake quantizer with a learned ``amax``."""

    def __init__(self, amax: float, tensor: str = ""):
        super().__init__()
        self.amax = nn.Parameter(torch.tensor(float(amax)))
        self.tensor = tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fake_quant(x, self.amax)

    def extra_repr(self) -> str:
        return f"tensor={self.tensor!r}, amax={float(self.amax):.4g}"


class WeightQuant(nn.Module):
    """Per-output-channel symmetric weight fake quantizer (a parametrization of ``conv.weight``)."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        s = w.detach().abs().amax(dim=tuple(range(1, w.ndim)), keepdim=True).clamp_min(1e-12) / QMAX
        q = torch.clamp(torch.round(w / s), -QMAX, QMAX) * s
        return w + (q - w).detach()


@dataclass
class QATPlan:
    """Where the calibrated Q/DQ file quantizes, in PyTorch module names."""
    weights: list[str]                      # conv modules with INT8 weights
    inputs: dict[str, str]                  # conv module -> ONNX tensor quantized at its input
    residuals: dict[str, str]               # residual block -> ONNX tensor quantized on its identity path
    amax: dict[str, float]                  # ONNX tensor -> calibrated amax
    fp32_nodes: list[str] = field(default_factory=list)
    placement: str = "trt"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "QATPlan":
        return cls(**d)


def _module_of_weight(init_name: str, modules: dict) -> str | None:
    name = init_name[:-len(".weight")] if init_name.endswith(".weight") else None
    if name is None:
        return None
    for cand in (name, name[len("model."):] if name.startswith("model.") else None):
        if cand is not None and cand in modules:
            return cand
    return None


def plan_from_qdq(qdq_model, net: nn.Module) -> QATPlan:
    """Read the Q/DQ placement of a calibrated file (``onnx.ModelProto``) as a :class:`QATPlan`
    for ``net`` (the PyTorch model the file was exported from). UserError when a quantized node
    has no PyTorch counterpart this module knows how to fake-quantize."""
    from .precision.qdq import WEIGHTED_OPS, ranges_from_qdq

    modules = dict(net.named_modules())
    g = qdq_model.graph
    inits = {i.name for i in g.initializer}
    prod = {o: n for n in g.node for o in n.output}

    def quantized_source(t: str) -> str | None:
        """The FP tensor behind ``DequantizeLinear(QuantizeLinear(x))``, or None (unquantized / a weight)."""
        dq = prod.get(t)
        if dq is None or dq.op_type != "DequantizeLinear":
            return None
        q = prod.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] in inits:
            return None
        return q.input[0]

    weights, inputs, residuals = [], {}, {}
    for n in g.node:
        if n.op_type in WEIGHTED_OPS and len(n.input) > 1:
            wdq = prod.get(n.input[1])
            if wdq is None or wdq.op_type != "DequantizeLinear" or wdq.input[0] not in inits:
                continue  # kept FP32 (static pooling, budget plan)
            wname = wdq.input[0]
            for suffix in ("_quantized", "_QuantizeLinear"):
                wname = wname[:-len(suffix)] if wname.endswith(suffix) else wname
            mod = _module_of_weight(wname, modules)
            if mod is None or not isinstance(modules[mod], (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                raise UserError(f"QAT: quantized node {n.name!r} (weight {wname!r}) has no matching PyTorch layer; "
                                f"the Q/DQ file does not come from this checkpoint's export")
            weights.append(mod)
            src = quantized_source(n.input[0])
            if src is not None:
                inputs[mod] = src
        elif n.op_type == "Add":
            srcs = [quantized_source(t) for t in n.input]
            q = [s for s in srcs if s is not None]
            if not q:
                continue
            block = n.name.rsplit("/", 1)[0]
            if len(q) != 1 or block not in modules or not hasattr(modules[block], "downsample"):
                raise UserError(f"QAT: quantized Add {n.name!r} is not a residual block input this module knows "
                                f"(expected one quantized residual input of a ResNet block)")
            residuals[block] = q[0]
    amax = ranges_from_qdq(qdq_model)
    missing = [t for t in list(inputs.values()) + list(residuals.values()) if t not in amax]
    if missing:
        raise UserError(f"QAT: no range for quantized tensor {missing[0]!r} in the calibrated file")
    from .card import onnx_meta_from_proto  # the one ONNX metadata reader

    cal = onnx_meta_from_proto(qdq_model).get("calibration") or {}
    used = set(inputs.values()) | set(residuals.values())
    return QATPlan(weights=weights, inputs=inputs, residuals=residuals,
                   amax={t: a for t, a in amax.items() if t in used},
                   fp32_nodes=list(cal.get("fp32_nodes") or []), placement=cal.get("placement") or "trt")


class QATModel(nn.Module):
    """``net`` with fake quantization where :class:`QATPlan` says; BatchNorm frozen (eval mode)."""

    def __init__(self, net: nn.Module, plan: QATPlan):
        super().__init__()
        self.net = net
        self.plan = plan
        self.act = nn.ModuleDict()
        self._keys: dict[str, str] = {}
        for t in sorted(set(plan.inputs.values()) | set(plan.residuals.values())):
            key = f"t{len(self._keys)}"
            self._keys[t] = key
            self.act[key] = ActQuant(plan.amax[t], t)
        modules = dict(net.named_modules())
        for mod_name in plan.weights:
            parametrize.register_parametrization(modules[mod_name], "weight", WeightQuant())
        for mod_name, t in plan.inputs.items():
            q = self.act[self._keys[t]]
            modules[mod_name].register_forward_pre_hook(lambda m, args, q=q: (q(args[0]),) + tuple(args[1:]))
        self._inserted: list[str] = []
        for block_name, t in plan.residuals.items():
            q = self.act[self._keys[t]]
            block = modules[block_name]
            if block.downsample is None:  # identity = self.downsample(x) when set: the quantizer is the path
                block.downsample = _Shared(q)
                self._inserted.append(f"{block_name}.downsample.")
            else:
                block.downsample.register_forward_hook(lambda m, args, out, q=q: q(out))

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def forward(self, x):
        return self.net(x)

    def ranges(self) -> dict[str, float]:
        """Learned ``amax`` per ONNX tensor."""
        return {t: float(self.act[k].amax.detach().abs()) for t, k in self._keys.items()}

    def plain_state_dict(self) -> dict:
        """``net``'s weights as the unwrapped model names them (no quantizers, no parametrizations)."""
        out = {}
        for k, v in self.net.state_dict().items():
            if any(k.startswith(p) for p in self._inserted):
                continue
            out[k.replace(".parametrizations.weight.original", ".weight")] = v.detach().clone()
        return out


class _Shared(nn.Module):
    """Holds a quantizer owned elsewhere (not registered twice in the state dict)."""

    def __init__(self, q: nn.Module):
        super().__init__()
        self.__dict__["_q"] = q

    def forward(self, x):
        return self._q(x)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _state_path(output: Path) -> Path:
    return qat_state_path(output)


#: what the QAT-exported file takes and gives (``pspnet-export``'s options of the same names)
INPUT_KINDS = ("float", "uint8")
OUTPUT_KINDS = ("logits", "labels")
CHANNEL_ORDERS = ("RGB", "BGR")


def run_qat(checkpoint: str | Path, output: str | Path, cfg: QATConfig, *, calib_table: str | Path | None = None,
            calib_split: str = "train", num_images: int | None = None, method: str | None = None,
            input_size: tuple[int, int] | None = None, resume: str | Path | None = None,
            cache_dir: str | Path | None = None, parser_check: bool = True, min_images: int | None = None,
            fp32_checkpoint: str | Path | None = None, input_kind: str = "float", channel_order: str = "RGB",
            output_kind: str = "logits") -> dict:
    """Calibrate (or reuse ``calib_table``), fine-tune with the calibrated file's fake quantization,
    write ``output`` (Q/DQ INT8 ONNX) and its ``.calib.json``. Training state is saved after each
    epoch to ``OUTPUT.qat-state.pt``; ``resume`` continues from such a file exactly.
    ``fp32_checkpoint``: also keep the fine-tuned weights as a plain FP32 checkpoint (the one the
    INT8 file was exported from; metadata ``qat.from_checkpoint_sha256``), e.g. to measure what QAT
    costs against its own weights rather than against the original model.
    ``input_kind`` / ``channel_order`` / ``output_kind``: what the INT8 file takes and gives, as
    ``pspnet-export`` writes them (uint8 HWC pixels with the preprocessing in the graph, kept FP32;
    an ArgMax label map). Training and the start calibration always run on the float model (the
    network is the same); only the final export carries them, through the exporter's own parity
    gate against PyTorch on the NumPy preprocessing of the same pixels. They may differ on
    ``resume`` (they are not training state).

    Steps: :func:`_check_options`, :func:`_resume_state`, :func:`_start_plan` (export and
    calibrate, or the state's), :func:`_fine_tune`, :func:`_export_int8`."""
    t0 = time.time()
    output = Path(output)
    fp32_checkpoint, io = _check_options(output, cfg, fp32_checkpoint, input_kind, channel_order, output_kind)
    if cfg.bf16 == "on":
        bf16_decision("on", "--bf16")  # refused at once on a CPU without native BF16
    has_bf16 = cpu_has_bf16()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    from .checkpoint import load_model
    from .data.preprocess import Preprocess

    net, meta = load_model(checkpoint)
    src_sha = meta.pop("sha256", None) or sha256_file(checkpoint)
    pre = Preprocess.from_dict(meta["preprocess"])
    size = tuple(input_size) if input_size else tuple(pre.input_size)
    state, cfg, size = _resume_state(resume, cfg, src_sha, size)
    # auto: measured here (machine.bf16_decision); a resumed run decides from its state's measurement
    recorded = (state or {}).get("bf16_decision") or {}
    bf16_record = bf16_decision(cfg.bf16, "--bf16", probe=recorded.get("measured") if cfg.bf16 == "auto" else None)
    use_bf16 = bf16_record["use_bf16"]
    report: dict = {"checkpoint": str(checkpoint), "checkpoint_sha256": src_sha, "output": str(output),
                    "input_size": list(size), "bf16": {"cpu_has_bf16": has_bf16, "used": use_bf16,
                                                       "isa": torch.backends.cpu.get_cpu_capability(),
                                                       "decision": bf16_record}, **io}
    with work_dir(output) as work:
        if state is None:
            plan, base_table, report["calibration"] = _start_plan(
                checkpoint, net, work, size, cfg, calib_table=calib_table, calib_split=calib_split,
                num_images=num_images, method=method, cache_dir=cache_dir, min_images=min_images)
        else:
            plan, base_table, report["calibration"] = (QATPlan.from_dict(state["plan"]), state["base_table"],
                                                       state["calibration"])
        model = QATModel(net, plan)
        saver = lambda *a: _save_state(_state_path(output), *a, cfg, plan, base_table,  # noqa: E731
                                       report["calibration"], src_sha, size, bf16_record)
        history, step, end, crop = _fine_tune(model, cfg, meta, pre, size, state, use_bf16, saver)
        report["history"] = history
        if end < cfg.epochs:
            report.update({"stopped_after_epoch": end, "state": str(_state_path(output)), "output": None,
                           "seconds": round(time.time() - t0, 1)})
            return report
        report["steps"] = step
        model.eval()
        qat_record = {"epochs": len(history), "steps": step, "data": str(cfg.data), "split": cfg.split,
                      "lr": cfg.lr, "batch_size": cfg.batch_size, "crop": list(crop), "bf16": use_bf16,
                      "bf16_decision": bf16_record, "cpu_has_bf16": has_bf16, "source_checkpoint_sha256": src_sha,
                      "calibration": report["calibration"], "final_loss": history[-1]["loss"] if history else None}
        report.update(_export_int8(model, plan, base_table, checkpoint, meta, work, output, size, cfg, io,
                                   qat_record, parser_check, fp32_checkpoint))
    report["seconds"] = round(time.time() - t0, 1)
    return report


def _check_options(output: Path, cfg: QATConfig, fp32_checkpoint, input_kind: str, channel_order: str,
                   output_kind: str) -> tuple[Path | None, dict]:
    """The options on their own, before any work: (the --fp32-checkpoint path, the export's IO kinds)."""
    if output.suffix.lower() != ".onnx":
        raise UserError(f"{output}: output must be an .onnx file (e.g. model.qat.int8.onnx)")
    if cfg.epochs <= 0 or cfg.batch_size <= 0 or cfg.lr <= 0:
        raise UserError("--epochs, --batch-size and --lr must be positive")
    if fp32_checkpoint is not None:
        fp32_checkpoint = check_output_file(fp32_checkpoint, "--fp32-checkpoint")
        if fp32_checkpoint.suffix.lower() != ".pt":
            raise UserError(f"{fp32_checkpoint}: --fp32-checkpoint must be a .pt file (e.g. model.qat.fp32.pt)")
    order = str(channel_order).upper()
    if input_kind not in INPUT_KINDS:
        raise UserError(f"--input-kind must be one of {', '.join(INPUT_KINDS)}, got {input_kind!r}")
    if output_kind not in OUTPUT_KINDS:
        raise UserError(f"--output-kind must be one of {', '.join(OUTPUT_KINDS)}, got {output_kind!r}")
    if order not in CHANNEL_ORDERS:
        raise UserError(f"--channel-order must be RGB or BGR, got {channel_order!r}")
    if order != "RGB" and input_kind != "uint8":
        raise UserError("--channel-order applies to --input-kind uint8 (a float input is preprocessed by the caller)")
    return fp32_checkpoint, {"input_kind": input_kind, "channel_order": order, "output_kind": output_kind}


def _resume_state(resume, cfg: QATConfig, src_sha: str, size) -> tuple[dict | None, QATConfig, tuple]:
    """The saved state to continue from (None without ``resume``), the config it was made with (only
    ``epochs``, ``progress`` and ``stop_after_epochs`` may change) and its export size."""
    if resume is None:
        return None, cfg, size
    resume = Path(resume)
    if not resume.is_file():
        raise UserError(f"{resume}: QAT state not found (written as OUT.qat-state.pt after each epoch)")
    state = safe_torch_load(resume, "QAT state", "pass the OUT.qat-state.pt pspnet-qat wrote")
    if not isinstance(state, dict) or state.get("format") != "pspnet-deploy/qat-state":
        raise UserError(f"{resume}: not a pspnet-qat state file")
    if state["checkpoint_sha256"] != src_sha:
        raise UserError(f"{resume}: state belongs to another checkpoint; pass the CHECKPOINT it was started from")
    saved = dict(state["config"])
    for k in ("epochs", "progress", "stop_after_epochs"):  # only these may change on resume
        saved[k] = getattr(cfg, k)
    return state, QATConfig(**saved), tuple(state["input_size"])


def _start_plan(checkpoint, net: nn.Module, work: Path, size, cfg: QATConfig, *, calib_table, calib_split: str,
                num_images, method, cache_dir, min_images) -> tuple[QATPlan, dict, dict]:
    """Export the float FP32 model, calibrate it (or apply ``calib_table``'s ranges and plan) and read
    the calibrated file's placement: (plan, its table, the calibration record)."""
    import onnx

    from .export import export_onnx
    from .precision.calib_data import DEFAULT_NUM_IMAGES
    from .precision.calibrate import calibrate_onnx
    from .precision.ranges import DEFAULT_METHOD
    from .precision.table import read_calibration_table, table_path_for

    fp32 = work / "model.fp32.onnx"
    say(cfg.progress, f"QAT: exporting {Path(checkpoint).name} at {size[0]}x{size[1]} and calibrating")
    export_onnx(checkpoint, fp32, input_size=size, num_verify=1, progress=False, threads=cfg.threads)
    calibrated = work / "calibrated.int8.onnx"
    if calib_table is not None:
        tbl = read_calibration_table(calib_table)
        rep = calibrate_onnx(fp32, calibrated, table=calib_table, force=True, progress=False, method=method,
                             placement=tbl.get("placement") or "trt", bias_correction=False, fallback="fp32",
                             threads=cfg.threads, parser_check=False)
    else:
        rep = calibrate_onnx(fp32, calibrated, cfg.data, split=calib_split,
                             num_images=num_images or DEFAULT_NUM_IMAGES, method=method or DEFAULT_METHOD,
                             cache_dir=cache_dir, progress=cfg.progress, threads=cfg.threads,
                             parser_check=False, **({"min_images": min_images} if min_images else {}))
    plan = plan_from_qdq(onnx.load(str(calibrated)), net)
    base_table = read_calibration_table(table_path_for(calibrated))
    record = {"method": rep["method"], "images": rep.get("images"),
              "from_table": str(calib_table) if calib_table else None}
    return plan, base_table, record


def _fine_tune(model: QATModel, cfg: QATConfig, meta: dict, pre, size, state: dict | None, use_bf16: bool,
               save) -> tuple[list, int, int, tuple]:
    """The training loop (SGD, poly lr, the seeded augmentation of pspnet-train), continuing ``state``;
    ``save(model, opt, epoch, step, history)`` after each epoch. Returns (history, steps done, the
    epoch it ended at, the crop)."""
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from .data import open_dataset
    from .data.transforms import TrainTransform
    from .train import SeededAugment  # the seeded (seed, epoch, index) augmentation wrapper pspnet-train uses

    ds = open_dataset(cfg.data, cfg.split)
    if len(ds) < cfg.batch_size:
        raise UserError(f"{cfg.data} [{cfg.split}]: {len(ds)} images are fewer than one batch of {cfg.batch_size}")
    if ds.info.num_classes != len(meta["classes"]):
        raise UserError(f"model predicts {len(meta['classes'])} classes but {cfg.data} has {ds.info.num_classes}")
    crop = tuple(cfg.crop) if cfg.crop else size
    transform = TrainTransform(crop, pre, tuple(cfg.scale), cfg.rotate, True, cfg.blur_prob, ds.info.ignore_index,
                               cfg.seed)
    aug = SeededAugment(ds, transform, cfg.seed)
    steps = len(ds) // cfg.batch_size
    steps = min(steps, cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch else steps
    total = steps * cfg.epochs
    weights = [p for n, p in model.named_parameters() if not n.startswith("act.")]
    groups = [{"params": weights, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
              {"params": list(model.act.parameters()), "lr": cfg.range_lr or cfg.lr, "weight_decay": 0.0}]
    opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    base_lrs = [g["lr"] for g in groups]
    start_epoch, step, history = 0, 0, []
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, step, history = state["epoch"], state["step"], state["history"]
    if start_epoch >= cfg.epochs:
        say(cfg.progress, f"QAT: state has {start_epoch} epoch(s) done, --epochs {cfg.epochs}: exporting only")
    bar = tqdm(total=total, initial=min(step, total), desc="qat", disable=not cfg.progress, dynamic_ncols=True)
    end = cfg.epochs if not cfg.stop_after_epochs else min(cfg.epochs, start_epoch + cfg.stop_after_epochs)
    for epoch in range(start_epoch, end):
        _seed_all(cfg.seed * 1000 + epoch)
        aug.epoch = epoch
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        loader = DataLoader(aug, batch_size=cfg.batch_size, shuffle=True, generator=gen, drop_last=True,
                            num_workers=cfg.workers)
        model.train()
        losses = []
        for k, (x, y) in enumerate(loader):
            if k >= steps:
                break
            f = (1 - step / max(total, 1)) ** cfg.power
            for g, b in zip(opt.param_groups, base_lrs):
                g["lr"] = b * f
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                out = model(x)
            loss = F.cross_entropy(out.float(), y.long(), ignore_index=ds.info.ignore_index)
            if not torch.isfinite(loss):  # never train on (or export from) NaN weights: say why, as pspnet-train does
                raise nonfinite_loss_error(loss.item(), y, ds.info.ignore_index, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():  # a range is a magnitude
                for q in model.act.values():
                    q.amax.abs_().clamp_(min=1e-6)
            step += 1
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", epoch=epoch + 1, refresh=False)
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else None})
        save(model, opt, epoch + 1, step, history)
    bar.close()
    return history, step, end, crop


def _export_int8(model: QATModel, plan: QATPlan, base_table: dict, checkpoint, meta: dict, work: Path, output: Path,
                 size, cfg: QATConfig, io: dict, qat_record: dict, parser_check: bool, fp32_checkpoint) -> dict:
    """The fine-tuned FP32 model exported (with the asked input and output kinds, parity gated), then
    the same Q/DQ writer with the learned ranges and the calibrated file's FP32 nodes; the ``qat``
    record stamped on. Returns the report's export fields."""
    from .checkpoint import load_model, save_checkpoint
    from .export import export_onnx
    from .precision.calibrate import calibrate_onnx

    plain, _ = load_model(checkpoint)
    plain.load_state_dict(model.plain_state_dict())
    tuned = work / "qat.pt"
    qmeta = {k: v for k, v in meta.items() if k != "sha256"}
    qmeta["qat"] = {"from_checkpoint_sha256": qat_record["source_checkpoint_sha256"]}
    save_checkpoint(tuned, plain, qmeta)
    tuned_onnx = work / "qat.fp32.onnx"
    parity = export_onnx(tuned, tuned_onnx, input_size=size, num_verify=1, progress=False, threads=cfg.threads,
                         input_kind=io["input_kind"], channel_order=io["channel_order"],
                         output_kind=io["output_kind"]).get("parity", {})
    learned = model.ranges()
    tbl = copy.deepcopy(base_table)
    for t, a in learned.items():
        tbl["tensors"][t] = {"amax": a, "scale": a / QMAX}
    tbl["source_onnx_sha256"] = sha256_file(tuned_onnx)  # a uint8 file's: calibrate_onnx maps it to its float body
    tbl_path = work / "qat.calib.json"
    tbl_path.write_text(json.dumps(tbl))
    rep = calibrate_onnx(tuned_onnx, output, table=tbl_path, progress=False, placement=plan.placement,
                         keep_fp32=plan.fp32_nodes, bias_correction=False, fallback="fp32", threads=cfg.threads,
                         parser_check=parser_check)
    _stamp_qat(output, qat_record, meta)
    out = {"qdq": rep["qdq"], "table": rep["table"], "parser_check": rep.get("parser_check"),
           "fp32_nodes": plan.fp32_nodes, "placement": plan.placement, "ranges": learned,
           "quantized_weights": len(plan.weights), "quantized_activations": len(learned),
           "export_parity": {k: parity.get(k) for k in ("passed", "metrics", "reference") if k in parity}}
    if fp32_checkpoint is not None:
        with atomic_path(fp32_checkpoint, ".pt") as tmp:
            shutil.copyfile(tuned, tmp)
        out["fp32_checkpoint"] = str(fp32_checkpoint)
    return out


def _stamp_qat(path: Path, record: dict, src_meta: dict) -> None:
    """Add the ``qat`` record to the INT8 file's metadata; keep the source checkpoint's provenance."""
    import onnx

    from .onnx_graph import write_onnx_metadata

    m = onnx.load(str(path))
    write_onnx_metadata(m, {"qat": record, "calibration_method": "qat"})
    with atomic_path(path) as tmp:
        onnx.save(m, str(tmp))


def _save_state(path: Path, model, opt, epoch, step, history, cfg, plan, base_table, calibration, sha, size,
                bf16: dict | None = None) -> None:
    """The training state after an epoch (what ``--resume`` continues from exactly; ``bf16``: how
    ``--bf16`` was decided, so a resumed run keeps the precision it started with)."""
    payload = {"bf16_decision": bf16, "format": "pspnet-deploy/qat-state", "model": model.state_dict(), "optimizer": opt.state_dict(),
               "epoch": epoch, "step": step, "history": history, "config": asdict(cfg), "plan": plan.to_dict(),
               "base_table": base_table, "calibration": calibration, "checkpoint_sha256": sha,
               "input_size": list(size)}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
