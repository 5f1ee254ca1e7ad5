"""An audit every k epochs of training: the BG-gap over training, as data.

::

    hook = AuditHook("cache", "data", every=5, size=64)   # any AuditConfig option
    hook(model, 0)                                         # before training (epochs done = 0)
    fit(model, batches, epochs=30, on_epoch=hook)          # dali_abs.training.fit calls hook(model, epochs done)
    [(r["epoch"], r["bg_gap"]) for r in hook.history]

Each due call audits the model (in eval mode; its mode is restored), appends the report (JSON,
with ``epoch``) to :attr:`history`, optionally as one line of ``jsonl``, and returns it; other
calls return None. The variants are the same at every epoch (same seed): the curve moves only
because the model does. Cache and dataset are opened once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dali_abs.audit.run import AuditConfig, _config, _open, audit, to_json
from dali_abs.errors import DaliAbsError


class AuditHook:
    """``AuditHook(cache, data=None, every=1, jsonl=None, config=None, **overrides)``; ``hook(model, epoch)``.

    ``epoch``: epochs done (0 = before training); the audit runs where ``epoch % every == 0``.
    ``jsonl``: a file to append each report to, one JSON object per line. ``config`` /
    ``overrides``: :class:`~dali_abs.audit.run.AuditConfig` fields (size, mean, std, device, ...).
    """

    def __init__(self, cache, data=None, every: int = 1, jsonl: str | os.PathLike | None = None,
                 config: AuditConfig | None = None, **overrides):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise DaliAbsError(f"AuditHook(every=...) must be a positive number of epochs, got {every!r}")
        self.config, self.overrides = config, {"examples": 0, **overrides}
        _config(config, self.overrides, "AuditHook")  # a bad option fails here, not at the first due epoch
        self.cache, self.ds = _open(cache, data)
        self.every, self.jsonl = every, None if jsonl is None else Path(jsonl)
        self.history: list[dict] = []

    def due(self, epoch: int) -> bool:
        return int(epoch) % self.every == 0

    def __call__(self, model, epoch: int) -> dict | None:
        if not self.due(epoch):
            return None
        report = {"epoch": int(epoch), **to_json(audit(model, self.cache, self.ds, self.config, **self.overrides))}
        self.history.append(report)
        if self.jsonl is not None:
            with open(self.jsonl, "a") as f:
                f.write(json.dumps(report) + "\n")
        return report
