"""Class anchors P: label prompts encoded by the CLIP text encoder plus a learnable embedding per anchor.

Label lists ship as package data (calm_study/labels/):
- charades_v1_classes.txt: the official Charades v1 class list (AllenAI, 2016), 157 lines `cNNN Label`.
- coco_80.txt: the 80 released COCO 2014/2017 category names; coco_91.txt: the COCO paper's 91 names (line n = id n).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import torch
from torch import nn

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


class AnchorBank(nn.Module):
    """P = text_encoder(prompt_k) + e_k for K anchors.

    encode="every_step": prompts go through the (trainable) text encoder every forward, so CLIP's text tower learns
    from the alignment loss too. encode="once": prompt features are computed here, at construction, by the initial
    text encoder without gradient and kept as a buffer (saved in checkpoints); only e_k learns.
    """

    def __init__(self, prompt_tokens: torch.Tensor, embed_dim: int, encode: str, embed_init_std: float,
                 encode_text: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        if encode not in ENCODE_MODES:
            raise ValueError(f"anchors.encode {encode!r}: valid are {', '.join(ENCODE_MODES)}")
        self.encode = encode
        self.register_buffer("prompt_tokens", prompt_tokens, persistent=False)  # (K, L)
        self.embedding = nn.Parameter(torch.randn(prompt_tokens.shape[0], embed_dim) * embed_init_std)  # (K, D)
        frozen = torch.zeros(0, embed_dim)
        if encode == "once":
            with torch.no_grad():
                frozen = encode_text(prompt_tokens).detach().float()  # (K, D)
        self.register_buffer("frozen_features", frozen)

    @property
    def num_anchors(self) -> int:
        return self.embedding.shape[0]

    def forward(self, encode_text: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        feats = encode_text(self.prompt_tokens) if self.encode == "every_step" else self.frozen_features  # (K, D)
        return feats + self.embedding  # (K, D)
