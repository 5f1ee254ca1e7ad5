"""The one rule for damaged JPEG files, shared by ``dali-abs data check`` and ``precompute``.

libjpeg recovers from damaged entropy-coded data (bytes flipped in the middle of a file, a
scan cut short) with a *warning* ("Corrupt JPEG data: 149 extraneous bytes before marker
0xd9", "Premature end of JPEG file") and returns an image with garbage blocks in it. DALI's
decoder prints that warning naming no file and carries on; PIL swallows it. Training on such
an image is training on wrong data, so a JPEG whose strict decode reports any warning or
error is skipped with that reason (:func:`jpeg_defect`), by both commands alike.

The strict decode is libjpeg-turbo's (the ``simplejpeg`` package) at 1/8 scale: the entropy
decoding, where damage shows, is done in full, the inverse DCT only for the DC terms
(about 1 ms for a 500 x 375 px photo on one core). Damage that still decodes cleanly (a
flipped bit inside one block's coefficients) is not detectable by any decoder; it is not
caught.
"""

from __future__ import annotations

import os


def jpeg_defect(path: str | os.PathLike, data: bytes | None = None) -> str | None:
    """None when the JPEG at ``path`` (or its bytes ``data``) decodes without a warning; else the reason.

    The reason names what the decoder reported and the fix, e.g. ``"corrupt JPEG data (the
    decoder reports 'Corrupt JPEG data: premature end of data segment'): re-export or replace
    the file"``. Call it only for files whose header says JPEG.
    """
    import simplejpeg

    if data is None:
        with open(path, "rb") as f:
            data = f.read()
    try:
        simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True, min_height=1, min_width=1)
    except (ValueError, RuntimeError) as e:  # strict=True turns libjpeg's warnings into ValueError
        msg = str(e).strip()
        what = "truncated JPEG" if "premature end of jpeg file" in msg.lower() else "corrupt JPEG data"
        return f"{what} (the decoder reports {msg!r}): re-export or replace the file"
    return None
