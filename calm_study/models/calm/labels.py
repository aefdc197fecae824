"""The label sources of CALM's anchors, and the CALM part's registry facts: its knobs and their checks (no torch).

Label lists ship as package data (calm_study/labels/):
- charades_v1_classes.txt: the official Charades v1 class list (AllenAI, 2016), 157 lines `cNNN Label`.
- coco_80.txt: the 80 released COCO 2014/2017 category names; coco_91.txt: the COCO paper's 91 names (line n = id n).

Validation reads this module and models/calm/variants.py; the anchors, the VAE and the head (anchors.py, vae.py,
head.py) import torch and are imported only where a model is built.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import fields
from importlib import resources
from pathlib import Path

from calm_study.config import AnchorConfig, TrialConfig, calm_enabled
from calm_study.models.calm.variants import ALIGN_VARIANTS

ENCODE_MODES = ("every_step", "once")  # anchors.encode


def _read_label_file(path: Path | str) -> list[str]:
    """The labels of a file, one per line (`cNNN ` prefixes stripped, blank lines skipped). Two lines with one label
    (compared as CLIP's tokenizer reads them: case and spacing aside) would be two anchors with one prompt: refused,
    naming both lines."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"label file {str(path)!r} cannot be read ({e}); a label file is UTF-8 text, one label per "
                         "line") from None
    labels: list[str] = []
    lines: dict[str, list[int]] = {}  # label as the tokenizer reads it -> its line numbers
    for number, line in enumerate(text.splitlines(), start=1):
        line = re.sub(r"^c\d{3}\s+", "", line.strip())  # Charades' `c000 Label` prefix
        if line:
            labels.append(line)
            lines.setdefault(" ".join(line.lower().split()), []).append(number)
    repeated = [f"{label!r} on lines {', '.join(map(str, numbers))}" for label, numbers in lines.items()
                if len(numbers) > 1]
    if repeated:
        raise ValueError(f"label file {str(path)!r} lists a label more than once: {'; '.join(repeated)}; two anchors "
                         "would share one prompt (CLIP's tokenizer ignores case and spacing): keep each label once")
    return labels


def _packaged(name: str) -> Callable[[], list[str]]:
    def load() -> list[str]:
        return _read_label_file(Path(str(resources.files("calm_study") / "labels" / name)))

    return load


LABEL_SOURCES: dict[str, Callable[[], list[str]]] = {
    "charades": _packaged("charades_v1_classes.txt"),
    "coco80": _packaged("coco_80.txt"),
    "coco91": _packaged("coco_91.txt"),
    "charades+coco": lambda: LABEL_SOURCES["charades"]() + LABEL_SOURCES["coco91"](),
}


def list_label_sources() -> list[str]:
    return sorted(LABEL_SOURCES)


def load_labels(source: str) -> list[str]:
    """Labels of a named source, or of a label file (one per line, `cNNN ` prefixes stripped)."""
    if source in LABEL_SOURCES:
        return LABEL_SOURCES[source]()
    path = Path(source).expanduser()
    if path.is_file():
        labels = _read_label_file(path)
        if not labels:
            raise ValueError(f"label file {str(path)!r} has no labels")
        return labels
    raise ValueError(f"{source!r} is neither a known label source nor an existing label file; valid: "
                     f"{', '.join(list_label_sources())} or a label file path")


def count_labels(source: str) -> int:
    return len(load_labels(source))


def pick_labels(source: str, count: int, seed: int) -> list[str]:
    """`count` labels of `source`: a seeded random subset, in source order (all of them when count == len)."""
    labels = load_labels(source)
    if not 0 <= count <= len(labels):
        raise ValueError(f"anchors.count {count} is out of range for {source!r} ({len(labels)} labels)")
    keep = sorted(random.Random(seed).sample(range(len(labels)), count))
    return [labels[i] for i in keep]


# The knobs every CALM variant reads (a variant's own are in its registry entry, models/calm/variants.py); with CALM
# off (loss.align none) a non-default value of any of them is refused.
CALM_KNOBS = tuple(f"anchors.{f.name}" for f in fields(AnchorConfig))


def calm_knobs(cfg: TrialConfig) -> tuple[str, ...]:
    """The CALM knobs this config reads: none for the baseline, the anchors' and its variant's otherwise."""
    return (*CALM_KNOBS, *ALIGN_VARIANTS[cfg.loss.align].knobs) if calm_enabled(cfg) else ()


def calm_part_knobs() -> tuple[str, ...]:
    """Every knob of the CALM part: the anchors' and every registered variant's (what the baseline has none of)."""
    return tuple(dict.fromkeys([*CALM_KNOBS, *(k for v in ALIGN_VARIANTS.values() for k in v.knobs)]))


def check_calm(cfg: TrialConfig) -> list[str]:
    """Problems of the CALM knobs' values that cross fields (only asked when CALM is on; every number's range is
    checked with every field's, validate.check_trial): the template, the anchor count against the label source."""
    a, loss = cfg.anchors, cfg.loss
    errs = [] if "{label}" in a.template else [f"anchors.template: {a.template!r} must contain {{label}}"]
    if a.count == 0:  # a negative count is out of its range, said with every field's
        errs.append(f"anchors.count: {a.count}: CALM (loss.align {loss.align}) needs at least one anchor; the baseline "
                    "without CALM is loss.align: none")
    try:
        n = count_labels(a.source)
        if a.count > n:
            errs.append(f"anchors.count: {a.count} is more than the {n} labels of source {a.source!r}")
    except ValueError as e:
        errs.append(f"anchors.source: {e}")
    return errs
