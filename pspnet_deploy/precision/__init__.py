"""Precision variants of an exported FP32 ONNX, one job per module.

- :mod:`.fp16`: FP32 -> FP16 ONNX (IO FP32), nodes FP16 cannot hold kept FP32, overflow check;
- :mod:`.observer`: the one activation observer (tensor values of an ONNX run on sample images),
  used by FP16 ranges and INT8 statistics alike;
- :mod:`.ranges`: ``|x|`` histograms and the range methods (minmax, entropy, percentile);
- :mod:`.calib_data`: calibration images, chosen, preprocessed and cached;
- :mod:`.qdq`: writing the Q/DQ INT8 model (TensorRT and ONNX Runtime placements, ModelOpt);
- :mod:`.table`: the calibration table (``.calib.json``);
- :mod:`.sensitivity`: the accuracy-budget search for nodes to keep FP32;
- :mod:`.bias_correction`: each quantized convolution's mean output shift taken out of its bias;
- :mod:`.calibrate`: the INT8 job that runs those steps (:func:`calibrate_onnx`);
- :mod:`.batches`: batches a model accepts, cut from an image array.

Layering: this package builds on data/ and the bottom-layer ONNX helpers
(:mod:`pspnet_deploy.onnx_graph`, :mod:`pspnet_deploy.ort_session`); export builds on it. Accuracy
is measured by an evaluator the caller passes in, so nothing here imports the runners or the
evaluation stage above it.
"""
