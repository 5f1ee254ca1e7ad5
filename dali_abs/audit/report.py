"""The audit report as a printed table (the JSON object is :func:`dali_abs.audit.run.to_json`).

Accuracies 0..1 with three decimals; BG-gap signed. One line per variant (accuracy, correct / n),
then BG-gap and only-bg accuracy against chance, then one row per class and per group
(their image count, then the accuracy on each variant).
"""

from __future__ import annotations

from dali_abs.audit.variants import VARIANTS

WHAT = {
    "original": "the image itself",
    "only_fg": "the object on a plain backdrop",
    "only_bg": "the clean background alone (object filled out)",
    "mixed_same": "the object on another image's background, same class",
    "mixed_rand": "the object on another image's background, any class",
    "mixed_next": "the object on a background of the next class",
}


def format_table(report: dict) -> str:
    """The report as text: settings line, per-variant table, BG-gap, per class / group tables."""
    n = report["images"]
    which = f"split {report['split']}"
    if report.get("subset") == "majority":
        which += ", majority groups " + ", ".join(report.get("majority_groups", []))
    if report.get("ids_given"):
        which += f", {report['ids_given']} ids given"
    lines = [f"audit of {report['model']}: {n} images ({which}), {report['size']} px, seed {report['seed']}",
             "", f"{'variant':<12}{'accuracy':>9}{'correct':>12}   shows"]
    for v in VARIANTS:
        lines.append(f"{v:<12}{report['accuracy'][v]:>9.3f}{report['correct'][v]:>7} / {n:<4}  {WHAT[v]}")
    lines += ["", f"BG-gap (mixed_same - mixed_rand): {report['bg_gap']:+.3f}    "
              f"only-bg accuracy: {report['only_bg']:.3f} (chance {report['chance']:.3f})"]
    own = {v: k for v, k in report.get("own_background", {}).items() if k}
    if own:
        lines.append("on their own background for lack of a partner in the batch: "
                     + ", ".join(f"{v} {k}" for v, k in own.items()))
    for key, title in (("per_class", "class"), ("per_group", "group")):
        table = report.get(key)
        if not table:
            continue
        width = max(14, max(len(k) for k in table) + 2)
        lines += ["", f"{title:<{width}}{'n':>5}" + "".join(f"{v:>12}" for v in VARIANTS)]
        for k, row in table.items():
            lines.append(f"{k:<{width}}{row['n']:>5}" + "".join(f"{row[v]:>12.3f}" for v in VARIANTS))
    return "\n".join(lines)


__all__ = ["format_table", "WHAT"]
