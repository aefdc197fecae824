"""The CALM VAE head: V_p -> q(z | V_p) = N(μ, σ²) -> z = μ + σ⊙ε -> Ŝ_p (logits; softmax gives the distribution)."""

from __future__ import annotations

import torch
from torch import nn


def _mlp(sizes: list[int], dropout: float) -> nn.Sequential:
    """FC layers with GELU + dropout after each (the last size is the output of the stack, also activated)."""
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.GELU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class AnchorVAE(nn.Module):
    def __init__(self, num_anchors: int, latent_dim: int, encoder_hidden: tuple[int, ...] = (512,),
                 decoder_hidden: tuple[int, ...] = (), dropout: float = 0.1):
        super().__init__()
        enc_sizes = [num_anchors, *encoder_hidden]
        self.encoder = _mlp(enc_sizes, dropout)
        self.to_mu = nn.Linear(enc_sizes[-1], latent_dim)
        self.to_logvar = nn.Linear(enc_sizes[-1], latent_dim)
        dec_sizes = [latent_dim, *decoder_hidden]
        self.decoder = _mlp(dec_sizes, dropout)
        self.to_logits = nn.Linear(dec_sizes[-1], num_anchors)

    def forward(self, v_p: torch.Tensor, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """v_p (B, K) -> {"mu", "logvar"} (B, d) and "recon_logits" (B, K).

        In training, z = μ + σ⊙ε with ε ~ N(0, I) (or the given `noise`, for reproducible tests and distributed
        equivalence checks); in eval mode z = μ.
        """
        h = self.encoder(v_p)  # (B, H)
        mu, logvar = self.to_mu(h), self.to_logvar(h)  # (B, d)
        if self.training:
            eps = torch.randn_like(mu) if noise is None else noise
            z = mu + torch.exp(0.5 * logvar) * eps  # (B, d)
        else:
            z = mu
        return {"mu": mu, "logvar": logvar, "recon_logits": self.to_logits(self.decoder(z))}  # (B, K)
