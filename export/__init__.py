"""Exporters for on-device fine-tuning (``edgesnn.export``).

* :mod:`edgesnn.export.onnx_step`: a whole training step (forward over T, loss, the project's own
  backward incl. RevLIF's single-pass inverse, SGD/AdamW update) as one plain ONNX inference graph,
  for plain ``onnxruntime`` on any board (``--format onnx-step``; the default route).
* :mod:`edgesnn.export.onnx_training`: legacy, x86-64 only: ONNX model + ONNX Runtime training
  artifacts (training / eval / optimizer graphs, checkpoint) and a manifest.
* :mod:`edgesnn.export.onnx_inference`: an inference-only ONNX model.
* :mod:`edgesnn.export.torchscript`: a traced TorchScript module that loads and trains in a fresh process.
* :mod:`edgesnn.export.runner`: the device-side fine-tuning loop; it never imports torch.
* :mod:`edgesnn.export.artifacts`: artifact-directory layout, manifest and validation (torch-free).

This package's ``__init__`` imports nothing, so ``python -m edgesnn.export.runner`` stays torch-free.
"""
