"""The background swap as one unit, free of DALI: its options (:mod:`.config`), the per-batch
parameters drawn as data (:mod:`.sampling`), the checked batch and its parameter records
(:mod:`.batch`), the one table of the kernel's arguments (:mod:`.signature`), the compositing
rule's NumPy reference twin (:mod:`.twin`) and its two backends, the kernel text compiled for the
CPU (:mod:`.cpu`) and launched through CuPy (:mod:`.gpu`), with the kernel sources beside them;
:func:`composite` (:mod:`.dispatch`) runs a batch on whichever side holds it; :mod:`.leak`
says where each composite pixel comes from (the foreground-leak measure), :mod:`.testing`
makes random batches. The loader
(:mod:`dali_abs.loader`) only wires these into DALI::

    from dali_abs import swap
    params = swap.sample_params(labels, rng, cfg, image_size=(224, 224), soft=soft)  # kornia-style
    out = swap.composite(swap.batch(images, soft, fills, boxes, params, cfg, size=(224, 224)))
"""

from dali_abs.swap.batch import Batch, batch, batch_of_records, pack_samples
from dali_abs.swap.config import BACKGROUNDS, FILLS, SCHEDULES, AugmentConfig, Normalize, SwapConfig, SwapError
from dali_abs.swap.dispatch import composite
from dali_abs.swap.sampling import foreground_box, sample_crops, sample_params

__all__ = ["BACKGROUNDS", "FILLS", "SCHEDULES", "AugmentConfig", "Batch", "Normalize", "SwapConfig", "SwapError", "batch",
           "batch_of_records", "composite", "foreground_box", "pack_samples", "sample_crops", "sample_params"]
