"""Model families: the contract every family keeps, and the registry `model.family` names (torch-free).

A family owns its outputs, its extra loss terms (a CALM head's, for instance), its named parameter groups, and how it
scores a (text, video) pair. Evaluation never assumes a dot product: it builds a text bank and a video bank once and
asks `score` for every (text, video) pair in chunks, so a family whose video feature depends on the query text can
score each pair with that pair's own text.

Every family's registry entry is here: what validation, `bench` and the report know about it (its knobs, their checks,
its traits), with its builder and random banks named by path (calm_study/lazy.py), so that reading the registry
imports neither torch nor the family's module. A new family is a module with its `build_<name>` and one entry here (or
`register_family` from outside the package, as the contract test does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from calm_study.checks import divides, one_of
from calm_study.clip_archs import embed_width
from calm_study.config import TrialConfig
from calm_study.lazy import Lazy
from calm_study.models.registry import Family

if TYPE_CHECKING:
    import torch
    from torch import nn

    from calm_study.models.registry import Bank


class VideoTextModel(Protocol):
    image_size: int  # input frames are S x S
    normalisation: tuple[tuple[float, ...], tuple[float, ...]]  # pixel (mean, std) the backbone expects

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """(N,) strings -> (N, L) token ids."""

    def __call__(self, batch: dict) -> dict:
        """A training batch as its task's `inputs` made it: {"frames" (B, T, 3, S, S), "mask" (B, T), "tokens" (B, L)}
        -> named outputs. Frozen-feature mode: names.FRAME_FEATURES (B, T, D) instead of "frames", and the cached
        "text_features" (B, D) with the tokens."""

    def encoders(self) -> object:
        """The CLIP encoders (models/clip_family.CLIPEncoders), all that frozen-feature mode and the workers' sync see
        of the backbone: tokenize, encode_text, encode_frames, embed_dim, the pixel format, the weights."""

    def extra_terms(self, out: dict) -> dict[str, torch.Tensor]:
        """Loss terms the family adds to the task's (unweighted; {} when none)."""

    def term_weights(self) -> dict[str, float]:
        """The weight of each extra term."""

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named groups, each with its own learning rate: "clip" (pretrained encoders) and "new" (added modules)."""

    def freeze_encoders(self) -> None:
        """model.frozen: the pretrained encoders stop learning (their features are read from the feature cache)."""

    def batch_logits(self, out: dict) -> torch.Tensor:
        """(N_text, N_video) scaled scores of every pair of the global training batch; pair i is (text i, video i)."""

    def text_bank(self, tokens: torch.Tensor, features: torch.Tensor | None = None) -> Bank:
        """What evaluation keeps per text: a tensor, or a dict of tensors, with one row per text. `features` (N, D):
        the texts' cached CLIP features (frozen-feature mode), used instead of running the text encoder."""

    def video_bank(self, frames: torch.Tensor | None, mask: torch.Tensor | None,
                   features: torch.Tensor | None = None) -> Bank:
        """What evaluation keeps per video: a tensor, or a dict of tensors, with one row per video, from pixels `frames`
        (N, T, 3, S, S), or from cached CLIP frame `features` (N, T, D) in frozen-feature mode."""

    def score(self, text_bank: Bank, video_bank: Bank, pool_with: Bank | None = None) -> torch.Tensor:
        """(N_text, N_video) scores; pair (i, j) may use only text i and video j. `pool_with` (text-conditioned
        families, the labelled tmass_compat protocol only): one text bank row per video to pool that video with."""


TEMPORAL_FUSIONS = ("mean", "transformer")  # model.temporal (clip4clip): models/temporal.py builds each
PRIORS = ("uniform01", "normal")  # model.prior (tmass): T-MASS's ε ~ U[0, 1)^D, or N(0, prior_std²)
CLIP4CLIP_KNOBS = ("model.temporal", "model.temporal_layers", "model.temporal_heads", "model.temporal_dropout")
POOL_KNOBS = ("model.pool_heads", "model.pool_dropout")  # xpool's, and tmass's with its own
TMASS_KNOBS = (*POOL_KNOBS, "model.prior", "model.prior_std", "model.support_weight", "model.trials", "model.eval_seed")


def _clip4clip_reads(cfg: TrialConfig) -> tuple[str, ...]:
    """The fusion's own knobs only when it is the transformer (mean fusion has none)."""
    return CLIP4CLIP_KNOBS if cfg.model.temporal == "transformer" else ("model.temporal",)


def _clip4clip_check(cfg: TrialConfig) -> list[str]:
    """The fusion's name, and (transformer) its heads against the width it attends over (ranges: config.py)."""
    m = cfg.model
    errs = one_of("model.temporal", m.temporal, TEMPORAL_FUSIONS)
    if m.temporal == "transformer":
        errs += divides("model.temporal_heads", m.temporal_heads, embed_width(m.clip),
                        f"the embedding width of model.clip {m.clip}")
    return errs


def _check_pool(cfg: TrialConfig) -> list[str]:
    """The text-conditioned pooling's heads against the width it attends over (xpool and tmass; ranges: config.py)."""
    m = cfg.model
    return divides("model.pool_heads", m.pool_heads, embed_width(m.clip), f"the embedding width of model.clip {m.clip}")


def _tmass_reads(cfg: TrialConfig) -> tuple[str, ...]:
    """prior_std only under the normal prior (uniform01 has no width)."""
    return TMASS_KNOBS if cfg.model.prior == "normal" else tuple(k for k in TMASS_KNOBS if k != "model.prior_std")


def _tmass_check(cfg: TrialConfig) -> list[str]:
    return _check_pool(cfg) + one_of("model.prior", cfg.model.prior, PRIORS)


# Every family, by model.family (models/registry.py says what an entry holds).
FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family(name="clip4clip", build=Lazy("calm_study.models.clip4clip:build_clip4clip"), task="retrieval",
           summary="CLIP frame features fused over time (mean or transformer) into one text-independent video feature",
           knobs=CLIP4CLIP_KNOBS, reads=_clip4clip_reads, check=_clip4clip_check,
           random_banks=Lazy("calm_study.models.clip4clip:random_banks")),
    Family(name="xpool", build=Lazy("calm_study.models.xpool:build_xpool"), task="retrieval",
           summary="X-Pool: each video pooled over its frames by the query text", knobs=POOL_KNOBS, check=_check_pool,
           text_conditioned=True, random_banks=Lazy("calm_study.models.xpool:random_pool_banks")),
    Family(name="tmass", build=Lazy("calm_study.models.tmass:build_tmass"), task="retrieval",
           summary="X-Pool pooling + T-MASS's stochastic text (the paper's baseline)", knobs=TMASS_KNOBS,
           reads=_tmass_reads, check=_tmass_check, text_conditioned=True, loss_terms=("support",),
           random_banks=Lazy("calm_study.models.tmass:random_banks")),
    # The decoder's knobs (caption.*) belong to task captioning (tasks/captioning/), which this family alone serves;
    # the captioner keeps the captioning contract (models/captioner.py).
    Family(name="captioner", build=Lazy("calm_study.models.captioner:build_captioner"), task="captioning",
           summary="CoCap's caption decoder over the CLIP frame tokens (task captioning)"),
)}


def register_family(family: Family) -> None:
    """Add a family from outside the package (a user's module, a test): validation, the contract test, bench and the
    report then know it like the shipped ones."""
    if family.name in FAMILIES:
        raise ValueError(f"model.family {family.name!r} is registered already")
    FAMILIES[family.name] = family


def list_families() -> list[str]:
    return sorted(FAMILIES)


def family_of(cfg: TrialConfig) -> Family:
    if cfg.model.family not in FAMILIES:
        raise ValueError(f"model.family {cfg.model.family!r} is unknown; valid: {', '.join(list_families())}")
    return FAMILIES[cfg.model.family]


def build_model(cfg: TrialConfig) -> VideoTextModel:
    """The model of a trial config: its family, with a CALM head when the config asks for anchors, its CLIP encoders
    frozen under model.frozen."""
    model = family_of(cfg).build(cfg)
    if cfg.model.frozen:
        model.freeze_encoders()
    return model
