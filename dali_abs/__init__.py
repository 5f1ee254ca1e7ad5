"""dali-abs: AutoBackSwap for NVIDIA DALI.

The stages follow the data flow, one module (or subpackage) each:
``dataset`` -> ``labels`` -> ``segmenter`` -> ``inpainter`` -> ``cache`` -> ``swap`` -> ``loader`` -> ``training``
(``swap`` is the compositing, free of DALI; ``loader`` wires the cache and the swap into DALI).
Heavy dependencies (DALI, CuPy, onnxruntime) are imported only by the paths that use them.
"""

__version__ = "0.1.0"
__all__ = ["create_loader", "LoaderConfig", "SwapConfig", "AugmentConfig"]


def __getattr__(name):
    # Lazy: `import dali_abs` must not import DALI.
    if name in ("create_loader", "LoaderConfig", "AugmentConfig"):
        from dali_abs.loader import iterator

        return getattr(iterator, name)
    if name == "SwapConfig":
        from dali_abs.swap.config import SwapConfig

        return SwapConfig
    raise AttributeError(f"module 'dali_abs' has no attribute {name!r}")
