"""The background swap as one unit, free of DALI: its options (:mod:`.config`), the per-batch
parameters drawn as data (:mod:`.sampling`), the compositing rule's NumPy reference twin
(:mod:`.twin`) and its two backends, the kernel text compiled for the CPU (:mod:`.cpu`) and
launched through CuPy (:mod:`.gpu`), with the kernel sources beside them. The loader
(:mod:`dali_abs.loader`) only wires these into DALI.
"""

from dali_abs.swap.config import BACKGROUNDS, FILLS, SCHEDULES, AugmentConfig, SwapConfig, SwapError
from dali_abs.swap.sampling import foreground_box, sample_crops, sample_params

__all__ = ["BACKGROUNDS", "FILLS", "SCHEDULES", "AugmentConfig", "SwapConfig", "SwapError", "foreground_box",
           "sample_crops", "sample_params"]
