"""FP32 mIoU on CamVid 0006R0 of the weights pspnet-qat fine-tuned (its .qat-state.pt), without fake
quantization: what the QAT INT8 file is compared with. Run from the repository root after pspnet-qat."""
import json, torch
from pspnet_deploy.checkpoint import load_model
from pspnet_deploy.data import open_dataset
from pspnet_deploy.evaluate import evaluate
from pspnet_deploy.runners.torch_runner import TorchRunner
torch.set_num_threads(2)
net, meta = load_model("models/pspnet_r18_camvid.pt")
s = torch.load("export/qat/model.qat.int8.qat-state.pt", map_location="cpu", weights_only=True)["model"]
sd = {}
for k, v in s.items():
    if not k.startswith("net."):
        continue
    k = k[4:].replace(".parametrizations.weight.original", ".weight")
    sd[k] = v
missing, unexpected = net.load_state_dict(sd, strict=False)
print("missing", missing[:5], "unexpected", unexpected[:5])
net.eval()
runner = TorchRunner(net, meta, device="cpu")
res = evaluate(runner, open_dataset("../shared/data/camvid", "train@0006R0"), progress=False)
print(json.dumps({"miou": res["miou"], "pixel_accuracy": res["pixel_accuracy"]}))
json.dump({k: res[k] for k in ("miou", "pixel_accuracy", "per_class_iou")}, open("calibration/heldout-r18/qat/eval_heldout_qat_weights_fp32.json", "w"), indent=1)
