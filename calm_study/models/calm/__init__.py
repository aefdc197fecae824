"""CALM, the add-on: class anchors, anchor distributions, the VAE head and the alignment terms (Table 7).

This package's own names are the torch-free ones validation needs (labels.py: the CALM knobs and their checks;
variants.py: the loss.align registry); the head that a family builds is in head.py.
"""

from calm_study.models.calm.labels import CALM_KNOBS, calm_knobs, calm_part_knobs, check_calm

__all__ = ["CALM_KNOBS", "calm_knobs", "calm_part_knobs", "check_calm"]
