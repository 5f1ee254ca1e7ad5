"""The patch segmenter stage: train from patch labels (:mod:`.train`), run the exported ONNX
model with onnxruntime (:mod:`.inference`), score it (:mod:`.evaluate`), CLI (:mod:`.cli`).

Convention everywhere: foreground probability per patch, 1 = foreground; images float32
NCHW RGB 0..1 at the model's input size. The network itself is in :mod:`dali_abs.models.segmenter`.
"""
