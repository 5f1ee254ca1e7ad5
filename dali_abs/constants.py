"""Constants every stage agrees on, in one small module without heavy imports."""

# ImageNet normalisation of RGB in 0..1: the loader's crop_mirror_normalize and training.normalize.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
