"""A caption decoder over frame tokens, after CoCap's caption head (docs/captioning.md), and its decoding.

One transformer over the sequence [frame tokens ; caption tokens]:

    frames h (B, T, D) -> LN, dropout, Linear(D, W), ReLU, LN -> (B, T, W)        caption ids (B, L) -> embed (B, L, W)
    + token-type embedding (frame | text) + sinusoidal position within each stream -> LN, dropout
    attention: every position sees the valid frames; a text position sees the text positions up to itself; frames
    never see text. So the logits of text position i depend on the frames and tokens 0..i only (causal).
    -> output layer (B, L, V): the next token's logits at every text position

The word embedding and the output layer are copies of CLIP's token embedding (the output layer has its own bias),
so the decoder starts in CLIP's token space. Decoding: greedy, or beam search ranked by log p / length^penalty.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal(n: int, width: int, device: torch.device) -> torch.Tensor:
    """(n, width) fixed sinusoidal positions (Vaswani et al.)."""
    pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]  # (n, 1)
    freq = torch.exp(torch.arange(0, width, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / width))
    out = torch.zeros(n, width, device=device)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq)[:, : width // 2]
    return out


class CaptionDecoder(nn.Module):
    def __init__(self, token_embedding: torch.Tensor, frame_dim: int, layers: int, heads: int, dropout: float):
        super().__init__()
        vocab, width = token_embedding.shape  # CLIP's (V, W)
        self.width = width
        self.frame_in = nn.Sequential(nn.LayerNorm(frame_dim), nn.Dropout(dropout), nn.Linear(frame_dim, width),
                                      nn.ReLU(), nn.LayerNorm(width))
        self.word = nn.Embedding(vocab, width)
        self.word.weight.data.copy_(token_embedding)
        self.token_type = nn.Embedding(2, width)  # 0: frame, 1: text
        self.embed_norm = nn.LayerNorm(width, eps=1e-12)
        self.embed_drop = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=width, dropout=dropout, activation="gelu",
                                           batch_first=True, layer_norm_eps=1e-12)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Linear(width, vocab)
        self.out.weight.data.copy_(token_embedding)
        nn.init.zeros_(self.out.bias)

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Frame features (B, T, D) -> frame tokens (B, T, W), computed once per video for decoding."""
        return self.frame_in(frames)

    def forward(self, frame_tokens: torch.Tensor, frame_mask: torch.Tensor, tokens: torch.Tensor,
                last_only: bool = False) -> torch.Tensor:
        """frame_tokens (B, T, W), frame_mask (B, T) True = a real frame, tokens (B, L) -> logits (B, L, V), or with
        last_only the last position's (B, V): decoding needs only the next token, and the output layer onto CLIP's
        49,408 tokens is the largest matrix product of a step."""
        (b, n_f, w), n_t = frame_tokens.shape, tokens.shape[1]
        dev = tokens.device
        frames = frame_tokens + sinusoidal(n_f, w, dev) + self.token_type.weight[0]
        text = self.word(tokens) + sinusoidal(n_t, w, dev) + self.token_type.weight[1]
        x = self.embed_drop(self.embed_norm(torch.cat([frames, text], dim=1)))  # (B, T + L, W)
        # blocked[q, k] = True where query q may not see key k.
        blocked = torch.zeros(n_f + n_t, n_f + n_t, dtype=torch.bool, device=dev)
        blocked[:n_f, n_f:] = True  # frames never see text
        blocked[n_f:, n_f:] = torch.ones(n_t, n_t, dtype=torch.bool, device=dev).triu(1)  # text: causal
        padding = torch.cat([~frame_mask.bool(), torch.zeros(b, n_t, dtype=torch.bool, device=dev)], dim=1)  # (B, S)
        h = self.blocks(x, mask=blocked, src_key_padding_mask=padding)  # (B, T + L, W)
        return self.out(h[:, -1]) if last_only else self.out(h[:, n_f:])  # (B, V) | (B, L, V)


def _next_log_probs(decoder: CaptionDecoder, frame_tokens: torch.Tensor, frame_mask: torch.Tensor,
                    seqs: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(decoder(frame_tokens, frame_mask, seqs, last_only=True).float(), dim=-1)  # (N, V)


@torch.no_grad()
def greedy(decoder: CaptionDecoder, frame_tokens: torch.Tensor, frame_mask: torch.Tensor, bos: int, eos: int,
           max_length: int) -> list[list[int]]:
    """The most likely token at every step, until EOS or max_length tokens (BOS and EOS counted); ids between them."""
    b = frame_tokens.shape[0]
    seqs = torch.full((b, 1), bos, dtype=torch.long, device=frame_tokens.device)  # (B, 1)
    done = torch.zeros(b, dtype=torch.bool, device=frame_tokens.device)
    for _ in range(max_length - 1):
        nxt = _next_log_probs(decoder, frame_tokens, frame_mask, seqs).argmax(-1)  # (B,)
        nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
        seqs = torch.cat([seqs, nxt[:, None]], dim=1)
        done |= nxt == eos
        if bool(done.all()):
            break
    return [_strip(row.tolist(), eos) for row in seqs]


def _strip(ids: list[int], eos: int) -> list[int]:
    """The ids after BOS and before the first EOS."""
    ids = ids[1:]
    return ids[: ids.index(eos)] if eos in ids else ids


@torch.no_grad()
def beam_search(decoder: CaptionDecoder, frame_tokens: torch.Tensor, frame_mask: torch.Tensor, bos: int, eos: int,
                max_length: int, beam_size: int, length_penalty: float = 1.0) -> list[list[int]]:
    """Per video, the hypothesis with the best log p / length^length_penalty among the finished ones (length: the
    tokens after BOS, EOS included).

    As fairseq's and UniVL's beam search, the beam never shrinks: every step extends the beam_size live hypotheses by
    every token and ranks the continuations; one ending in EOS among the beam_size best is set aside as finished, and
    the beam_size best that do not end in EOS stay live (of the 2·beam_size best continuations at most beam_size end in
    EOS, one per live hypothesis, so beam_size others are always there). A video is done once it holds beam_size
    finished hypotheses; at max_length the beam_size best continuations finish, cut. With beam_size 1 this is greedy
    decoding."""
    b, k, dev = frame_tokens.shape[0], beam_size, frame_tokens.device
    frames = frame_tokens.repeat_interleave(k, dim=0)  # (B·K, T, W)
    mask = frame_mask.repeat_interleave(k, dim=0)  # (B·K, T)
    seqs = torch.full((b * k, 1), bos, dtype=torch.long, device=dev)  # (B·K, t)
    scores = torch.full((b, k), -math.inf, device=dev)
    scores[:, 0] = 0.0  # one live hypothesis to start with
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]
    done = [False] * b
    for step in range(1, max_length):
        logp = _next_log_probs(decoder, frames, mask, seqs).view(b, k, -1)  # (B, K, V)
        vocab = logp.shape[-1]
        cand = (scores[:, :, None] + logp).view(b, -1)  # (B, K·V)
        top, idx = cand.topk(min(2 * k, cand.shape[-1]), dim=-1)  # (B, 2K), best first
        last = step == max_length - 1
        keep_beam = torch.zeros(b, k, dtype=torch.long)  # (B, K): which hypothesis each live one extends
        keep_token = torch.full((b, k), eos, dtype=torch.long)  # (B, K): by which token
        keep_score = torch.full((b, k), -math.inf)  # (B, K): -inf = no live hypothesis in this slot
        rows = seqs.view(b, k, -1).tolist()
        for i, (tops, ids) in enumerate(zip(top.tolist(), idx.tolist())):
            live = 0
            for rank, (score, flat) in enumerate(zip(tops, ids)):
                if done[i] or not math.isfinite(score):
                    break
                beam, token = divmod(flat, vocab)
                if token == eos or last:
                    if rank < k:  # among the beam_size best: finished (step = tokens after BOS)
                        finished[i].append((score / step ** length_penalty, _strip(rows[i][beam] + [token], eos)))
                elif live < k:
                    keep_beam[i, live], keep_token[i, live], keep_score[i, live] = beam, token, score
                    live += 1
            done[i] = done[i] or len(finished[i]) >= k or live == 0
        if all(done):
            break
        keep_beam, keep_token = keep_beam.to(dev), keep_token.to(dev)
        seqs = torch.cat([seqs.view(b, k, -1).gather(1, keep_beam[:, :, None].expand(-1, -1, seqs.shape[1])),
                          keep_token[:, :, None]], dim=2).view(b * k, -1)
        scores = keep_score.to(dev)
        scores[torch.tensor(done, device=dev)] = -math.inf
    return [max(f, key=lambda x: x[0])[1] if f else [] for f in finished]
