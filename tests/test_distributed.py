"""Two training workers (gloo, DDP, features gathered with gradients) = one worker on the concatenated batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from calm_study.models.families import build_model
from calm_study.tasks import build_task
from calm_study.training.fit import step_terms
from calm_study.validate import trial_from_dict

BATCH = 6  # global batch; each of the 2 workers gets 3


def make_inputs(model):
    g = torch.Generator().manual_seed(1)
    frames = torch.randn(BATCH, 4, 3, 32, 32, generator=g)
    mask = torch.ones(BATCH, 4, dtype=torch.bool)
    tokens = model.tokenize([f"a {c} shape moves {d}" for c, d in zip(
        ["red", "green", "blue", "cyan", "pink", "grey"], ["left", "right", "up", "down", "left", "up"])])
    noise = torch.randn(BATCH, 256, generator=g)  # the VAE's ε, so both runs draw the same sample
    text_noise = torch.rand(BATCH, 64, generator=g)  # T-MASS's ε of the stochastic text, likewise
    return frames, mask, tokens, noise, text_noise


def step(model, wrapped, cfg, sl):
    frames, mask, tokens, noise, text_noise = make_inputs(model)
    batch = {"frames": frames[sl], "mask": mask[sl], "tokens": tokens[sl], "text_noise": text_noise[sl]}
    out = wrapped(batch, vae_noise=noise[sl])
    task = build_task(cfg)
    terms = step_terms(task, model, out, {**task.term_weights(), **model.term_weights()})
    terms["total"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in terms.items()}, grads


def worker(rank, world, port, doc, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    cfg = trial_from_dict(doc)
    model = build_model(cfg)
    per = BATCH // world
    terms, grads = step(model, DistributedDataParallel(model), cfg, slice(rank * per, (rank + 1) * per))
    for v in terms.values():  # per-sample terms are local means: average them like DDP averages gradients
        dist.all_reduce(v)
        v /= world
    torch.save({"terms": terms, "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("family", ["clip4clip", "tmass"])
def test_two_workers_match_one_worker_on_the_concatenated_batch(tiny_doc, tmp_path, family):
    """The loss and every gradient of 2 gloo workers = those of 1 worker on the concatenated batch: for clip4clip
    (transformer fusion) and for tmass (pairwise pooling, stochastic text, support term), both with CALM."""
    tiny_doc["vae"] = {"dropout": 0.0}  # dropout masks would differ between the two layouts
    own = ({"temporal": "transformer", "temporal_heads": 4, "temporal_dropout": 0.0} if family == "clip4clip" else
           {"pool_dropout": 0.0, "support_weight": 0.8})  # each family's own knobs (others are refused)
    tiny_doc["model"].update(family=family, **own)
    torch.manual_seed(0)
    cfg = trial_from_dict(tiny_doc)
    model = build_model(cfg)
    terms, grads = step(model, model, cfg, slice(0, BATCH))

    mp.spawn(worker, args=(2, free_port(), tiny_doc, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name, value in terms.items():
        for r in ranks:
            assert torch.allclose(r["terms"][name], value, rtol=1e-4, atol=1e-6), name
    assert set(ranks[0]["grads"]) == set(grads)
    for name, g in grads.items():
        for r in ranks:  # DDP leaves the same averaged gradient on every worker
            # atol 1e-5: fp32 sums accumulated in another order (a token embedding row summed over two workers' text
            # passes, gradients up to ~5) differ by a few 1e-6 where the gradient itself is near zero
            assert torch.allclose(r["grads"][name], g, rtol=1e-3, atol=1e-5), name
