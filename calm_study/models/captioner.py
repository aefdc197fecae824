"""Family `captioner` (task captioning): CLIP frame features -> a caption decoder, with CALM as an add-on.

    frames (B, T, 3, S, S) -> h (B, T, D) -> decoder([h ; caption tokens]) -> next-token logits (B, L-1, V)
    CALM (training only): V_p from mean_t h_t, S_p from the CLIP text feature of the ground-truth caption.
    Decoding uses the video alone.

Captions are CLIP's BPE tokens (BOS 49406 ... EOS 49407, then padding), the same ids the text encoder reads, so one
tokenisation serves the decoder's input, its targets and S_p. The contract the captioning task relies on is
`CaptionModel` below: the outputs (`logits`, `labels`), `generate` and `detokenize`, plus the plumbing every CLIP
family shares (tokenize, extra_terms, term_weights, param_groups).

Its registry entry (`model.*` knobs it reads, their checks, traits) is in models/families.py; this module
builds the model (`build_captioner`).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from calm_study.config import CaptionConfig, TrialConfig
from calm_study.models.backbone import CLIPBackbone
from calm_study.models.calm.head import CALMHead, build_calm_head
from calm_study.models.caption_decoder import CaptionDecoder, beam_search, greedy
from calm_study.models.clip_family import CLIPFamily
from calm_study.models.temporal import masked_mean
from calm_study.names import LR_GROUPS

IGNORE = -100  # label of a position after EOS (padding): no loss


class CaptionModel(Protocol):
    def generate(self, frames: torch.Tensor | None, mask: torch.Tensor, features: torch.Tensor | None = None
                 ) -> list[list[int]]:
        """Pixels (B, T, 3, S, S), or cached frame `features` (B, T, D) (frozen-feature mode), and the mask (B, T)
        -> per video the decoded token ids (between BOS and EOS)."""

    def detokenize(self, ids: list[int]) -> str:
        """Token ids -> text."""


def shift(tokens: torch.Tensor, eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP token rows (B, L) -> decoder inputs (B, L'-1) and next-token labels (B, L'-1), IGNORE after EOS; L' is
    the longest caption's length (BOS..EOS), so padding beyond every caption costs nothing."""
    is_eos = tokens == eos
    if not bool(is_eos.any(dim=1).all()):
        raise ValueError("every caption row must contain the EOS token (CLIP's tokenizer puts it at the end)")
    ends = is_eos.int().argmax(dim=1)  # (B,) position of the first EOS
    n = int(ends.max()) + 1
    tokens = tokens[:, :n]
    labels = tokens[:, 1:].clone()  # (B, n-1)
    after = torch.arange(n - 1, device=tokens.device)[None, :] >= ends[:, None]  # label index >= EOS position
    labels[after] = IGNORE
    return tokens[:, :-1], labels


class Captioner(CLIPFamily):
    def __init__(self, backbone: CLIPBackbone, decoder: CaptionDecoder, calm: CALMHead | None, caption: CaptionConfig,
                 logit_scale_max: float):
        super().__init__(backbone, logit_scale_max)  # the shared plumbing's clamp; captioning freezes the scale
        self.decoder = decoder
        self.calm = calm
        self.caption = caption
        tok = backbone.tokenizer
        self.bos, self.eos = int(tok.sot_token_id), int(tok.eot_token_id)
        self.max_length = min(caption.max_length, int(tok.context_length))
        # Parts no loss reaches get no gradient: freeze them, so that optimisers and DDP see only trained weights.
        # The logit scale is a retrieval parameter; without CALM the text tower is unused too.
        backbone.clip.logit_scale.requires_grad_(False)
        if calm is None:
            for name, p in backbone.clip.named_parameters():
                if not name.startswith("visual."):
                    p.requires_grad_(False)

    def forward(self, batch: dict, vae_noise: torch.Tensor | None = None) -> dict:
        """{"frames" (B, T, 3, S, S) or FRAME_FEATURES (B, T, D), "mask" (B, T), "tokens" (B, L)} -> {"logits"
        (B, L'-1, V), "labels" (B, L'-1)} (+ CALM's outputs)."""
        h = self.batch_frame_features(batch)  # (B, T, D)
        inputs, labels = shift(batch["tokens"], self.eos)
        logits = self.decoder(self.decoder.encode_frames(h), batch["mask"], inputs)  # (B, L'-1, V)
        out: dict = {"logits": logits, "labels": labels}
        if self.calm is not None:
            text = self.caption_features(batch)  # (B, D): S_p's caption feature, training only
            out.update(self.calm(masked_mean(h, batch["mask"]), text, self.backbone.encode_text, vae_noise))
        return out

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """The shared groups, except that the decoder's word embedding and output weights, copies of CLIP's token
        embedding, learn at CLIP's rate (optim.lr_clip) as in CoCap, whose `pretrained_modules` (the CLIP encoder, the
        word embeddings, the LM head's weight) get CLIP_LR (`mm_video/trainer/cocap_trainer.py:81-91, 135-139`). The
        output layer's bias is new (CoCap's `prediction_head.bias`)."""
        groups = super().param_groups()
        clip_group, new_group = LR_GROUPS
        copied = {id(self.decoder.word.weight), id(self.decoder.out.weight)}
        return {clip_group: groups[clip_group] + [p for p in groups[new_group] if id(p) in copied],
                new_group: [p for p in groups[new_group] if id(p) not in copied]}

    @torch.no_grad()
    def generate(self, frames: torch.Tensor | None, mask: torch.Tensor, features: torch.Tensor | None = None
                 ) -> list[list[int]]:
        c = self.caption
        frame_tokens = self.decoder.encode_frames(self.frame_features(frames, features))  # (B, T, W)
        if c.beam_size == 1:
            return greedy(self.decoder, frame_tokens, mask, self.bos, self.eos, self.max_length)
        return beam_search(self.decoder, frame_tokens, mask, self.bos, self.eos, self.max_length, c.beam_size,
                           c.length_penalty)

    def detokenize(self, ids: list[int]) -> str:
        return self.backbone.tokenizer.decode(ids).strip()


def build_captioner(cfg: TrialConfig) -> Captioner:
    m, c = cfg.model, cfg.caption
    backbone = CLIPBackbone(m.clip, m.pretrained)
    token_embedding = backbone.clip.token_embedding.weight.detach()  # (V, W): CLIP's, copied into the decoder
    decoder = CaptionDecoder(token_embedding, backbone.embed_dim, c.layers, c.heads, c.dropout)
    calm = build_calm_head(cfg, backbone.tokenize, backbone.encode_text, backbone.embed_dim)
    return Captioner(backbone, decoder, calm, c, cfg.loss.logit_scale_max)
