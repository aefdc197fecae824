"""Family `tmass`: X-Pool pooling plus T-MASS's stochastic text embedding (the paper's baseline, its Table 6 row 1).

    s_ij[f] = cos(t_i, h_jf)                       (T,)   text-frame cosines of the pair
    R_ij = exp(W s_ij + b)                         (D,)   W: Linear(T -> D), identity-initialised, b = 0
    t_s = t_i + ε ⊙ R_ij,  ε ~ U[0, 1)^D (prior uniform01) or N(0, std²) (prior normal)
    training: one ε per text per step, R from the text's own video; logits[i, j] = scale · cos(t_s,i, pool(t_i, v_j))
    support text (weight model.support_weight): t_sup,i = t_i + (v̄_i − t_i)/‖v̄_i − t_i‖ ⊙ R_i with
        v̄_j = mean_i pool(t_i, v_j); L_sup = symmetric CE over scale · cos(t_sup,i, pool(t_i, v_j))
    inference: S[i, j] = max over `model.trials` draws of cos(t_i + ε_k ⊙ R_ij, pool(t_i, v_j)); the draws are seeded
        per text (model.eval_seed), so a score never depends on chunking or on the other texts.
    tmass_compat (T-MASS's published, leaky indexing): k* = argmax_k cos(t_i + ε_k ⊙ R_ij, pool(t_i, v_j)) is picked
        against the query-pooled video as above, and S[i, j] = cos(t_i + ε_k* ⊙ R_ij, pool(t_j, v_j)), that draw
        scored against video j pooled by its own caption j.

Short clips: padded frame slots (mask False) never influence anything. The pooling and V_p mask them; the radius
head, which has one input per frame slot, reads in each padded slot the cosine of the clip's last real frame, which
is what T-MASS's decoder (it repeats a short clip's last frame) would give it (docs/calm-choices.md).

With a CALM head, S_p comes from the deterministic t (never t_s) and V_p from the frame mean, as in every family.

Its registry entry (`model.*` knobs it reads, their checks, traits) is in models/families.py; this module
builds the model (`build_tmass`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from calm_study.config import TrialConfig
from calm_study.distributed import gather_with_grad
from calm_study.models.backbone import CLIPBackbone
from calm_study.models.calm.head import build_calm_head
from calm_study.models.losses import symmetric_cross_entropy
from calm_study.models.xpool import TextConditionedPool, XPool, pooled_cosine, random_pool_banks


def repeat_last_real(cos: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """cos (..., N_v, T) with every padded slot of mask (N_v, T) holding the cosine of the last real slot before it
    (of the first real slot, for padding ahead of every real frame): the radius head then sees what T-MASS's repeated
    last frame would give it, and nothing a padded slot holds can reach R."""
    if mask is None:
        return cos
    slots = torch.arange(mask.shape[-1], device=mask.device)
    last = torch.where(mask.bool(), slots, -1).cummax(dim=-1).values  # (N_v, T): last real slot at or before each
    first = mask.int().argmax(dim=-1, keepdim=True)  # (N_v, 1): first real slot
    source = torch.where(last < 0, first, last)  # (N_v, T)
    return cos.gather(-1, source.expand_as(cos))


class RadiusHead(nn.Module):
    """log R = W s + b from the T text-frame cosines s; W starts as the identity on the first T dimensions, b = 0.
    With a frame mask, each padded slot of s is the last real frame's cosine (`repeat_last_real`)."""

    def __init__(self, num_frames: int, width: int):
        super().__init__()
        self.linear = nn.Linear(num_frames, width)
        nn.init.eye_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def paired(self, text: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """R of each text with its own video: text (N, D), frames (N, T, D), mask (N, T) -> (N, D)."""
        cos = torch.bmm(F.normalize(frames, dim=-1), F.normalize(text, dim=-1).unsqueeze(-1)).squeeze(-1)  # (N, T)
        return self.linear(repeat_last_real(cos, mask)).exp()

    def all_pairs(self, text: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """R of every (text, video) pair: text (n, D), frames (N_v, T, D), mask (N_v, T) -> (n, N_v, D)."""
        n_v, n_f, _ = frames.shape
        cos = F.normalize(text, dim=-1) @ F.normalize(frames, dim=-1).reshape(n_v * n_f, -1).t()  # (n, N_v * T)
        return self.linear(repeat_last_real(cos.view(len(text), n_v, n_f), mask)).exp()


class TMASS(XPool):
    def __init__(self, backbone: CLIPBackbone, pool: TextConditionedPool, radius: RadiusHead, cfg: TrialConfig):
        super().__init__(backbone, pool, None, cfg.loss.logit_scale_max)
        self.radius = radius
        m = cfg.model
        self.prior, self.prior_std, self.trials, self.eval_seed = m.prior, m.prior_std, m.trials, m.eval_seed
        self.support_weight = m.support_weight

    def noise(self, shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None = None
              ) -> torch.Tensor:
        if self.prior == "normal":
            return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype) * self.prior_std
        return torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)

    def forward(self, batch: dict, vae_noise: torch.Tensor | None = None) -> dict:
        """X-Pool's outputs plus "text_noise" (B, D): this step's ε of every caption (drawn here, on the worker that
        holds the caption, so several workers draw what one worker would; a batch may bring its own)."""
        out = super().forward(batch, vae_noise)
        noise = batch.get("text_noise")
        out["text_noise"] = self.noise(out["text"].shape, out["text"]) if noise is None else noise
        return out

    def batch_logits(self, out: dict) -> torch.Tensor:
        """scale · cos(t_s,i, pool(t_i, v_j)) over the global batch; caches what the support term needs in `out`."""
        text, frames, mask = self.gathered(out)
        pooled = self.pool(text, frames, mask)  # (N_t, N_v, D)
        r = self.radius.paired(text, frames, mask)  # (N, D): each text with its own video
        stochastic = text + gather_with_grad(out["text_noise"]) * r  # one draw per text per step
        out["_tmass"] = (text, pooled, r)
        return self.scale() * pooled_cosine(stochastic, pooled)

    def extra_terms(self, out: dict) -> dict[str, torch.Tensor]:
        terms = super().extra_terms(out)
        if self.support_weight > 0:
            if "_tmass" not in out:
                self.batch_logits(out)
            text, pooled, r = out["_tmass"]
            mean_video = pooled.mean(dim=0)  # (N_v, D): v̄_j, the video pooled by every text, averaged
            direction = F.normalize(mean_video - text, dim=-1)  # pair i: text i and its own video i
            support = text + direction * r
            terms["support"] = symmetric_cross_entropy(self.scale() * pooled_cosine(support, pooled))
        return terms

    def term_weights(self) -> dict[str, float]:
        return {**super().term_weights(), "support": self.support_weight}

    def text_bank(self, tokens: torch.Tensor, features: torch.Tensor | None = None) -> dict:
        """The raw text feature and its `trials` noise draws, seeded by (model.eval_seed, the text's tokens)."""
        text = self.text_features(tokens, features).float()  # (N, D)
        draws = []
        for row in tokens.cpu():
            g = torch.Generator().manual_seed(self.eval_seed * 1_000_003 + hash(tuple(row.tolist())) % 1_000_003)
            draws.append(self.noise((self.trials, text.shape[1]), torch.empty(0), g))
        return {"text": text, "noise": torch.stack(draws).to(text.device)}  # (N, D), (N, trials, D)

    def score(self, text_bank: dict, video_bank: dict, pool_with: dict | None = None) -> torch.Tensor:
        """(N_text, N_video): the best of `trials` stochastic texts per pair (T-MASS's inference), leak-free.

        `pool_with` (only for the labelled tmass_compat protocol) reproduces T-MASS's published indexing: the draw is
        still picked against video j pooled by the query, as T-MASS's trainer picks it, and only that draw is then
        scored against video j pooled by pool_with["text"][j] (its own caption), as T-MASS's sim matrix scores it.
        Taking the maximum against the own-caption pooling instead would understate the leak."""
        t, eps = text_bank["text"], text_bank["noise"]  # (n, D), (n, trials, D)
        p = F.normalize(self.pooled(t, video_bank, None), dim=-1)  # (n, N_v, D): every pair pooled by its query
        r = self.radius.all_pairs(t, video_bank["frames"], video_bank["mask"])  # (n, N_v, D): R_ij of every pair
        cos = self.draw_cosines(t, eps, r, p)  # (n, N_v, K)
        if pool_with is None:
            return cos.amax(dim=-1)  # (n, N_v)
        own = F.normalize(self.pooled(t, video_bank, pool_with), dim=-1)  # (n, N_v, D): video j by caption j
        best = cos.argmax(dim=-1, keepdim=True)  # (n, N_v, 1): T-MASS's argmax, the first draw on a tie
        return self.draw_cosines(t, eps, r, own).gather(-1, best).squeeze(-1)  # (n, N_v)

    @staticmethod
    def draw_cosines(t: torch.Tensor, eps: torch.Tensor, r: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """cos(t_i + ε_ik ⊙ R_ij, p_ij) of every draw: t (n, D), ε (n, K, D), R (n, N_v, D), p (n, N_v, D) unit
        rows -> (n, N_v, K).

        Expanded so that no (n, N_v, D) tensor is built per draw: numerator t·p + Σ_d ε_kd R_d p_d, squared norm
        ‖t‖² + 2 Σ_d t_d ε_kd R_d + Σ_d ε_kd² R_d²; the three sums over d for all draws are batched matrix products
        (tests compare with the draw-by-draw loop)."""
        numerator = torch.einsum("id,ijd->ij", t, p)[..., None] + torch.bmm(r * p, eps.transpose(1, 2))  # (n, N_v, K)
        norm2 = ((t * t).sum(-1)[:, None, None] + 2 * torch.bmm(r, (eps * t[:, None, :]).transpose(1, 2))
                 + torch.bmm(r * r, (eps * eps).transpose(1, 2)))  # (n, N_v, K)
        return numerator / norm2.clamp(min=1e-12).sqrt()


def build_tmass(cfg: TrialConfig) -> TMASS:
    m = cfg.model
    backbone = CLIPBackbone(m.clip, m.pretrained)
    pool = TextConditionedPool(backbone.embed_dim, m.pool_heads, m.pool_dropout)
    radius = RadiusHead(cfg.data.num_frames, backbone.embed_dim)
    model = TMASS(backbone, pool, radius, cfg)
    model.calm = build_calm_head(cfg, backbone.tokenize, backbone.encode_text, backbone.embed_dim)
    return model


def random_banks(n_text: int, n_video: int, num_frames: int, width: int, cfg: TrialConfig,
                  g: torch.Generator) -> tuple[dict, dict]:
    """X-Pool's banks plus the model.trials draws of ε per text: (N_text, trials, D), T-MASS's uniform prior."""
    text, video = random_pool_banks(n_text, n_video, num_frames, width, cfg, g)
    text["noise"] = torch.rand(n_text, cfg.model.trials, width, generator=g)
    return text, video
