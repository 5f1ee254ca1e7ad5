"""The inpainter stage: fill the foreground hole to make a clean background.

:mod:`.inference` (``Inpainter``: run any contract-following ONNX fill), :mod:`.train` (the
learned fill), :mod:`.wrap` (adapters for foreign ONNX inpainters), :mod:`.evaluate` (scores
against the true backgrounds), :mod:`.cli` (``dali-abs inpainter ...``). The contract itself
is documented in :mod:`dali_abs.models.inpainter`.
"""
