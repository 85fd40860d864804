"""The models of a benchmark: ``PATH[:LABEL]`` arguments, what their cards say before loading
(classes, batch, size, FLOPs), the device each runs on, and loading each into a runner.

A model's card (:func:`pspnet_deploy.card.read_card`) is read once: the spec keeps it
(:attr:`ModelSpec.card`, set by the caller that already read it or by :func:`peek_model`) and
:func:`load_model_runner` hands it to the runner.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..card import SUFFIX_KINDS, ModelCard, model_kind, read_card, strip_model_suffix
from ..errors import UserError


@dataclass
class ModelSpec:
    path: Path
    label: str
    explicit_label: bool = True
    #: the model file's card once read (by the CLI's pre-flight or :func:`peek_model`); passed on, never re-read
    card: ModelCard | None = field(default=None, repr=False, compare=False)

    @property
    def kind(self) -> str:
        return SUFFIX_KINDS.get(self.path.suffix.lower(), "?")

    def read_card(self) -> ModelCard:
        """The card, read on first use and kept."""
        if self.card is None:
            self.card = read_card(self.path)
        return self.card


def parse_model_arg(spec, label: str | None = None) -> ModelSpec:
    """``path`` or ``path:label`` (or a ``(path, label)`` pair / a ModelSpec) -> ModelSpec.

    An existing file whose name contains ``:`` is taken whole.
    """
    if isinstance(spec, ModelSpec):
        return spec if label is None else dataclasses.replace(spec, label=label, explicit_label=True)
    if isinstance(spec, (tuple, list)):
        path, lab = spec
        return parse_model_arg(path, label or str(lab))
    s = str(spec)
    path, lab = s, None
    if not Path(s).exists() and ":" in s:
        head, tail = s.rsplit(":", 1)
        if head and tail and "/" not in tail:
            path, lab = head, tail
    p = Path(path)
    try:
        model_kind(p)
    except UserError as e:
        raise UserError(f"{e} (use PATH:LABEL to name a model)") from None
    if not p.is_file():
        raise UserError(f"{p}: model file not found")
    return ModelSpec(p, label or lab or _default_label(p), explicit_label=bool(label or lab))


def _default_label(p: Path) -> str:
    return strip_model_suffix(p.name) or str(p)


def peek_model(spec: ModelSpec, input_size: tuple[int, int] | None = None) -> dict:
    """What can be known about a model file without loading it into a runner (its card): classes,
    fixed batch, input size, file size, FLOPs per image (None where unknown). Bad files raise UserError."""
    from .. import flops as fl

    card = spec.read_card()
    info: dict = {"classes": card.classes, "fixed_batch": card.fixed_batch, "input_size": card.input_size,
                  "static_size": card.static_size, "file_bytes": card.file_bytes, "flops": None,
                  "flops_method": None}
    if card.kind == "torch":
        card.require("preprocess", hint="train it with pspnet-train")
        info["input_size"] = tuple(input_size or card.input_size)
        try:
            info["flops"] = fl.torch_flops(card.model, info["input_size"])
            info["flops_method"] = "torch FlopCounterMode on the meta device (2 x MACs of conv/matmul), per image"
        except Exception as e:  # noqa: BLE001 - FLOPs are informative; a failure must not stop the benchmark
            info["flops_error"] = f"{type(e).__name__}: {e}"
        return info
    src = Path(spec.path) if card.kind == "onnx" else fl.engine_source_onnx(card)
    if src is None:
        return info
    try:
        f = fl.onnx_flops(src, info["input_size"] if card.kind == "onnx" else None)
        info["flops"] = f["flops"] if f["counted_nodes"] else None
        if card.kind == "onnx":
            info["flops_method"] = f["method"] + (f" (lower bound: {len(f['uncounted_nodes'])} nodes without shapes)"
                                                  if f["uncounted_nodes"] else "")
        else:
            info["flops_method"] = f"from the source ONNX {src.name} (2 x MACs, shape inference), per image"
    except Exception as e:  # noqa: BLE001 - FLOPs are informative, but a bad ONNX given to bench is bad input
        if card.kind == "onnx" and isinstance(e, UserError):
            raise
        info["flops_error"] = f"{type(e).__name__}: {e}"
    return info


def check_batches(label: str, path, batches: Iterable[int], fixed_batch: int | None,
                  batch_range: tuple[int, int] | None = None) -> None:
    for b in batches:
        if fixed_batch is not None and b != fixed_batch:
            raise UserError(f"{path}: model {label!r} has a fixed batch of {fixed_batch}, cannot run --batch {b}; "
                            f"re-export it with --dynamic-batch or bench it with --batch {fixed_batch}")
        if batch_range is not None and not (batch_range[0] <= b <= batch_range[1]):
            raise UserError(f"{path}: model {label!r} accepts batches {batch_range[0]}..{batch_range[1]}, cannot run "
                            f"--batch {b}; rebuild the engine with a wider batch range")


def model_device(spec: ModelSpec, device: str) -> str:
    """The device a model runs on: ``device``, except that TensorRT engines always run on CUDA
    (``cuda`` when ``device`` is the CPU), so a CPU model and an engine can be compared in one run."""
    device = str(device)
    if spec.kind == "tensorrt" and not device.startswith("cuda"):
        return "cuda"
    return device


def load_model_runner(spec: ModelSpec, device: str, threads: int | None, input_size, cuda_graph: bool = False):
    """The runner of ``spec`` on ``device`` (CPU: ONNX Runtime's CPU provider only), given the card already read."""
    from ..runners import RunnerOptions, load_runner

    cpu = not str(device).startswith("cuda")
    return load_runner(spec.path, RunnerOptions(device=device, threads=threads or None,
                                                input_size=tuple(input_size) if input_size else None,
                                                providers=["CPUExecutionProvider"] if cpu else None,
                                                cuda_graph=bool(cuda_graph)), card=spec.card)


def short_classes(classes) -> str:
    classes = list(classes)
    return f"[{', '.join(classes[:4])}{', ...' if len(classes) > 4 else ''}] ({len(classes)})"
