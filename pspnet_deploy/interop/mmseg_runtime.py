"""Run mmsegmentation's own PSPNet on CPU (for proofs: the tests and ``export/mmseg_floor_pool.py``).

Nothing in the conversion uses this module. It needs the ``interop`` extra plus mmengine,
mmcv-lite and mmsegmentation (installed ``--no-deps``, see the Makefile). mmcv-lite has no
compiled ops and mmseg imports a few ``mmcv.ops`` names at import time that PSPNet never calls:
:func:`import_mmseg_models` puts a stub module in ``sys.modules['mmcv.ops']`` whose names resolve
and raise on use, then imports ``mmseg.models`` (not ``register_all_modules``, which pulls in the
datasets) and returns its ``MODELS`` registry.
"""
from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import numpy as np
import torch

__all__ = ["import_mmseg_models", "shipped_config", "build_mmseg_pspnet", "randomise_", "save_like_mmengine",
           "mmseg_inference"]


class _StubOps(types.ModuleType):
    """``mmcv.ops`` for mmcv-lite: any name resolves to a function that raises when called."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def _unavailable(*args, **kwargs):
            raise RuntimeError(f"mmcv.ops.{name} is not available in mmcv-lite (no compiled ops)")

        _unavailable.__name__ = name
        return _unavailable


def import_mmseg_models():
    """mmseg's ``MODELS`` registry with its models registered; ImportError if mmseg is missing."""
    import warnings

    import mmcv  # noqa: F401  (ImportError: not installed)
    import mmengine  # noqa: F401

    if "mmcv.ops" not in sys.modules:
        try:
            importlib.import_module("mmcv.ops")
        except Exception:  # noqa: BLE001 - mmcv-lite: no compiled extension
            for k in [k for k in sys.modules if k == "mmcv.ops" or k.startswith("mmcv.ops.")]:
                del sys.modules[k]
            stub = _StubOps("mmcv.ops")
            stub.__file__ = "<stub: mmcv-lite has no compiled ops>"
            stub.__path__ = []
            sys.modules["mmcv.ops"] = stub
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mmseg.models  # noqa: F401
        from mmseg.registry import MODELS
    return MODELS


def shipped_config(name: str) -> Path:
    """Path of a config shipped in the mmseg wheel (``pspnet/<name>`` or ``<folder>/<name>``)."""
    from .mmconfig import mmseg_config_root

    root = mmseg_config_root()
    if root is None:
        raise ImportError("mmsegmentation's configs are not installed")
    p = root / name if "/" in name else root / "pspnet" / name
    if not p.is_file():
        raise FileNotFoundError(p)
    return p


def _plain_bn(obj):
    if isinstance(obj, dict):
        out = {k: _plain_bn(v) for k, v in obj.items()}
        if out.get("type") == "SyncBN":
            out["type"] = "BN"
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain_bn(v) for v in obj)
    return obj


def randomise_(model: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere, BN statistics included, scaled so a deep stack stays bounded."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("running_mean") or (t.ndim == 1 and name.endswith("bias")):
                t.copy_((torch.rand(t.shape, generator=g) - 0.5) * 0.2)
            elif t.ndim == 1:
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.3)
            else:
                fan_in = int(np.prod(t.shape[1:]))
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / fan_in) ** 0.5)


def build_mmseg_pspnet(models, config: str | Path, seed: int = 0):
    """``(model, cfg)``: mmseg's model built from a config with ``MODELS.build`` (SyncBN -> BN,
    no data preprocessor, no pretrained weights), randomised, in eval mode; ``cfg`` is mmengine's."""
    from mmengine.config import Config, ConfigDict

    path = Path(config) if Path(config).is_file() else shipped_config(str(config))
    cfg = Config.fromfile(str(path))
    mcfg = _plain_bn(cfg.model.to_dict())
    mcfg["data_preprocessor"] = None
    mcfg["pretrained"] = None
    if isinstance(mcfg.get("backbone"), dict):
        mcfg["backbone"].pop("init_cfg", None)
    model = models.build(ConfigDict(mcfg))
    randomise_(model, seed)
    return model.eval(), cfg


def save_like_mmengine(model, cfg, path: str | Path, classes, palette=None) -> None:
    """Write what mmengine's ``Runner.save_checkpoint`` writes, with mmengine's own objects and
    writer: ``meta`` (``cfg`` text, seed as numpy scalar, ``dataset_meta``), the message hub's
    state (HistoryBuffers holding numpy arrays), optimizer and scheduler state."""
    import time

    import mmengine
    from mmengine.logging import MessageHub
    from mmengine.optim import OptimWrapper, PolyLR
    from mmengine.runner.checkpoint import save_checkpoint, weights_to_cpu

    hub = MessageHub.get_instance(f"pspnet-deploy-{Path(path).stem}-{time.time_ns()}")
    for i in range(3):
        hub.update_scalar("train/loss", 1.0 / (i + 1))
        hub.update_scalar("train/lr", np.float64(0.01))
    hub.update_info("iter", 3)
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    sched = PolyLR(optim, eta_min=1e-4, power=0.9, begin=0, end=80000, by_epoch=False)
    if palette is None:
        palette = [[i, 2 * i % 256, 3 * i % 256] for i in range(len(classes))]
    meta = {"epoch": 0, "iter": 3, "cfg": cfg.pretty_text, "seed": np.int64(0), "experiment_name": "pspnet-deploy",
            "time": time.strftime("%Y%m%d_%H%M%S"), "mmengine_version": mmengine.__version__,
            "dataset_meta": {"classes": tuple(classes), "palette": [list(c) for c in palette]}}
    ckpt = {"meta": meta, "state_dict": weights_to_cpu(model.state_dict()), "message_hub": hub.state_dict(),
            "optimizer": optim.state_dict(), "param_schedulers": [sched.state_dict()]}
    save_checkpoint(ckpt, str(path))


def mmseg_inference(model, x: torch.Tensor) -> torch.Tensor:
    """mmseg's ``EncoderDecoder.inference`` (test mode 'whole') on a normalised NCHW batch."""
    h, w = x.shape[-2:]
    metas = [{"img_shape": (h, w), "ori_shape": (h, w), "pad_shape": (h, w)}] * x.shape[0]
    with torch.no_grad():
        return model.inference(x, metas)
