"""``dali-abs audit``: how much does a trained classifier read the background?

The Backgrounds Challenge's variants (original, only-fg, only-bg, mixed-same, mixed-rand,
mixed-next) of the user's own test images, made on the fly from the cache by the loader's
compositing, and the model's accuracy on each: the BG-gap (mixed-same - mixed-rand) and the
only-bg accuracy in one report, a table and a picture. It comes after the loader in the data flow
(it imports the cache, the swap and the loader, never the reverse).

- :mod:`~dali_abs.audit.variants`: each variant as a :class:`~dali_abs.swap.config.SwapConfig`,
  the seeds and the reading order that pairs images inside batches;
- :mod:`~dali_abs.audit.models`: TorchScript, ONNX, ``torch.nn.Module`` or callable behind one call;
- :mod:`~dali_abs.audit.run`: :func:`audit` (the report dict) and :class:`AuditConfig`;
- :mod:`~dali_abs.audit.report`: the printed table; :mod:`~dali_abs.audit.png`: the picture;
- :mod:`~dali_abs.audit.hook`: :class:`AuditHook`, an audit every k epochs of training;
- :mod:`~dali_abs.audit.cli`: ``dali-abs audit``.
"""

from dali_abs.audit.hook import AuditHook
from dali_abs.audit.models import Classifier, as_classifier, load_classifier
from dali_abs.audit.report import format_table
from dali_abs.audit.run import AuditConfig, audit, to_json
from dali_abs.audit.variants import MIXED, VARIANTS

__all__ = ["AuditConfig", "AuditHook", "Classifier", "MIXED", "VARIANTS", "as_classifier", "audit", "format_table",
           "load_classifier", "to_json"]
