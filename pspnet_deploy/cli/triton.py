"""pspnet-triton: a Triton Inference Server model repository for an .onnx or .engine model."""
from __future__ import annotations

import sys

from .common import make_parser, refuse_ignored, run

PROG = "pspnet-triton"


def build_parser():
    p = make_parser(PROG, "Write <repo>/<name>/config.pbtxt, <repo>/<name>/<version>/model.onnx (onnxruntime "
                          "backend) or model.plan (tensorrt_plan) and <repo>/<name>/pspnet.json (classes, palette, "
                          "preprocessing for clients). A fixed-batch model gets max_batch_size 0 with full dims; a "
                          "dynamic-batch model gets max_batch_size and dynamic batching.")
    p.add_argument("model", help="ONNX (.onnx), TensorRT engine (.engine) or OpenVINO IR (.xml + .bin), "
                                      "the last two with their sidecars")
    p.add_argument("--repo", required=True, help="model repository folder")
    p.add_argument("--name", default=None, help="model name in the repository (default pspnet_<file stem>)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="max_batch_size for a dynamic-batch model (default: engine profile max, else the "
                        "export's --dynamic-batch max, else 8)")
    p.add_argument("--instances", type=int, default=1, help="model instances (instance_group count)")
    p.add_argument("--instance-kind", choices=["gpu", "cpu", "auto"], default=None,
                   help="instance_group kind (default gpu for engines, cpu for OpenVINO, auto for ONNX)")
    p.add_argument("--kind", choices=["onnx", "engine", "openvino"], default=None,
                   help="model kind (default: from the suffix)")
    p.add_argument("--performance-hint", choices=["LATENCY", "THROUGHPUT"], default="LATENCY",
                   help="OpenVINO: the backend's PERFORMANCE_HINT parameter")
    p.add_argument("--streams", default=None, help="OpenVINO: the backend's NUM_STREAMS parameter (N or AUTO)")
    p.add_argument("--version", type=int, default=1, help="model version folder")
    p.add_argument("--no-dynamic-batching", action="store_true", help="leave out dynamic_batching { }")
    p.add_argument("--force", action="store_true", help="replace an existing version folder")
    return p


def main(argv=None) -> int:
    from ..runfiles import RunFiles
    from ..triton import model_dirs, model_name, write_triton_repo

    parser = build_parser()
    a = parser.parse_args(argv)
    from pathlib import Path

    from ..card import SUFFIX_KINDS

    openvino = (a.kind or SUFFIX_KINDS.get(Path(a.model).suffix.lower())) == "openvino"
    refuse_ignored(parser, a, [("performance_hint", not openvino, "unless the model is an OpenVINO IR"),
                               ("streams", not openvino, "unless the model is an OpenVINO IR")])
    model_dir, vdir = model_dirs(a.repo, model_name(a.model, a.name), a.version)
    files = RunFiles().read_model(a.model).write_dir(a.repo, "--repo folder")
    files.write_dir(vdir, "model version folder", replaces=True)  # --force replaces it whole
    files.also_writes(model_dir / "config.pbtxt", "config.pbtxt").also_writes(model_dir / "pspnet.json", "pspnet.json")
    files.check()
    res = write_triton_repo(a.model, a.repo, name=a.name, max_batch=a.max_batch, instances=a.instances, kind=a.kind,
                            instance_kind=a.instance_kind, version=a.version,
                            dynamic_batching=not a.no_dynamic_batching, force=a.force,
                            performance_hint=a.performance_hint, streams=a.streams)
    print(f"{PROG}: wrote {res['model_dir']} ({res['kind']}, max_batch_size {res['max_batch_size']}, "
          f"{res['instances']} x {res['instance_kind']}); serve with: tritonserver --model-repository {a.repo}")
    return 0


def entry() -> None:
    sys.exit(run(PROG, main))


if __name__ == "__main__":
    entry()
