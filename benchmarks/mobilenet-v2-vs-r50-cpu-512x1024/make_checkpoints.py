"""The two models of this benchmark, made by mmsegmentation 1.2.2's own code: its shipped configs
``mobilenet-v2-d8_pspnet_4xb2-80k_cityscapes-512x1024.py`` and ``pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py``
built with ``MODELS.build`` (random weights, randomised BN statistics: latency does not depend on
the values), saved as mmengine does, converted with ``pspnet-convert``. Usage: make_checkpoints.py OUT_DIR"""
import sys
from pathlib import Path

from pspnet_deploy.interop import convert_checkpoint, mmseg_runtime

CONFIGS = {"mbv2": "mobilenet_v2/mobilenet-v2-d8_pspnet_4xb2-80k_cityscapes-512x1024.py",
           "r50": "pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py"}

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
models = mmseg_runtime.import_mmseg_models()
for name, config in CONFIGS.items():
    model, cfg = mmseg_runtime.build_mmseg_pspnet(models, config, seed=0)
    src = out / f"{name}.pth"
    mmseg_runtime.save_like_mmengine(model, cfg, src, [f"class_{i}" for i in range(19)])
    convert_checkpoint(src, out / f"{name}.pt")
    print(name, "->", out / f"{name}.pt")
