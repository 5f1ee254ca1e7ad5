"""A spurious benchmark built from real photographs, the way Waterbirds was built
(``dali-abs make-dataset OUT --objects DATA --masks MASKS [--places PLACES]``).

Objects are cut out of their photos by their masks (grayscale, 255 = object, soft values
allowed) and pasted with their soft alpha onto photos of places: where they were in their
photo, or (``--object-scale LO[,HI]``) shrunk by a factor drawn per composite and put at a
random position wholly inside the frame, a side their photo cut them on kept on the frame's
edge. Places come from a folder of place photos by place (ImageFolder: place = folder), or,
without one (the *habitat* mode), from the object photos themselves: each photo with its object
filled out (the push-pull fill of the inpainter stage, over the mask dilated a little) is a
place of its class, a class's natural habitat.

- Masks a machine made can be wrong: photos whose mask covers too little or too much of the
  photo, or is mostly undecided, are skipped, and every skip is written with its reason to
  ``dataset.json`` (the thresholds too).
- Source photos are split (per class, and per place) into train / val / test; a photo serves
  one split only, as object and as place, so no photo is seen both in train and in test.
- Train is correlated with probability rho (default 1.0: class k only on place k); val and
  test are balanced over all groups (class, place).
- Deterministic: the same inputs and settings give byte-identical files.

Written to OUT (our Waterbirds layout, like the built-in benchmark of :mod:`dali_abs.synthetic`;
readable by :func:`dali_abs.dataset.load_dataset`):

- ``images/<class>/<id>.jpg``   the composite, RGB JPEG (quality 90), ``size`` x ``size``
- ``masks/<id>.png``            the pasted object's alpha, grayscale, 255 = object (soft)
- ``backgrounds/<id>.jpg``      the clean place under the object (quality 95)
- ``metadata.csv``              ``img_id,img_filename,y,split,place,mask_filename,background_filename``
                                plus provenance ``object_id,object_file,place_id,place_file``
                                (files relative to DATA, and to PLACES or DATA) and the pose
                                ``object_scale,object_x,object_y`` (top-left of the object's box)
- ``dataset.json``              settings, thresholds, source photos and composites per split and
                                group, every skipped photo with its reason
- ``preview.png``               test composites per group, backgrounds per place, skipped masks

Python API: :func:`make_photo_dataset` with a :class:`PhotoConfig`.
"""

from dali_abs.photobench.build import make_photo_dataset
from dali_abs.photobench.config import PhotoBenchError, PhotoConfig

__all__ = ["PhotoBenchError", "PhotoConfig", "make_photo_dataset"]
