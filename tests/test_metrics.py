"""Retrieval metrics against slow, obvious oracles (several captions per video, unequal counts, ties)."""

import numpy as np
import pytest
import torch

from calm_study.tasks.retrieval.metrics import retrieval_metrics


def oracle_t2v_ranks(sim, text_to_video):
    """Sort each text's videos by score (descending); among equal scores the correct video goes last."""
    ranks = []
    for i, row in enumerate(sim):
        gt = text_to_video[i]
        order = sorted(range(len(row)), key=lambda j: (-row[j], j == gt))
        ranks.append(order.index(gt) + 1)
    return ranks


def oracle_v2t_ranks(sim, text_to_video):
    """For each video with captions: its best correct caption against every wrong caption, correct last on ties."""
    ranks = []
    for v in range(sim.shape[1]):
        correct = [i for i, tv in enumerate(text_to_video) if tv == v]
        if not correct:
            continue
        best = max(correct, key=lambda i: sim[i][v])
        candidates = [i for i in range(sim.shape[0]) if i not in correct] + [best]
        order = sorted(candidates, key=lambda i: (-sim[i][v], i == best))
        ranks.append(order.index(best) + 1)
    return ranks


def oracle_metrics(sim, text_to_video):
    out = {}
    for prefix, ranks in (("t2v", oracle_t2v_ranks(sim, text_to_video)), ("v2t", oracle_v2t_ranks(sim, text_to_video))):
        r = np.array(ranks, dtype=float)
        for k in (1, 5, 10):
            out[f"{prefix}_R{k}"] = 100.0 * sum(x <= k for x in ranks) / len(ranks)
        out[f"{prefix}_MdR"] = float(np.median(r))
        out[f"{prefix}_MnR"] = float(r.mean())
    return out


@pytest.mark.parametrize("n_video,caps,integer_scores,distractors", [
    (20, 1, False, 0), (15, 3, False, 0), (12, 2, True, 0), (30, 1, True, 5), (8, 4, True, 3), (1, 1, False, 0),
])
def test_metrics_match_oracle(n_video, caps, integer_scores, distractors):
    rng = np.random.default_rng(n_video * 10 + caps)
    n_all = n_video + distractors  # distractor videos have no caption
    text_to_video = [v for v in range(n_video) for _ in range(caps)]
    sim = rng.integers(0, 4, (len(text_to_video), n_all)).astype(float) if integer_scores else \
        rng.normal(size=(len(text_to_video), n_all))
    ours = retrieval_metrics(sim, text_to_video)
    expected = oracle_metrics(sim, text_to_video)
    assert ours.keys() == expected.keys()
    for k in expected:
        assert ours[k] == pytest.approx(expected[k]), k


def test_tie_free_square_matches_clip4clip_convention():
    """On a tie-free square matrix with the ground truth on the diagonal, our 1-based ranks are CLIP4Clip's
    0-based `np.where(np.sort(-x) - diag(-x) == 0)` ranks plus one."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 50))
    sx = np.sort(-x, axis=1)
    d = np.diag(-x)[:, None]
    c4c_ranks = np.where(sx - d == 0)[1]
    ours = retrieval_metrics(x, list(range(50)))
    assert ours["t2v_R1"] == pytest.approx(100 * np.mean(c4c_ranks < 1))
    assert ours["t2v_R5"] == pytest.approx(100 * np.mean(c4c_ranks < 5))
    assert ours["t2v_MdR"] == pytest.approx(np.median(c4c_ranks) + 1)
    assert ours["t2v_MnR"] == pytest.approx(np.mean(c4c_ranks) + 1)


def test_hand_computed_example_with_two_captions_per_video():
    # texts 0,1 -> video 0; texts 2,3 -> video 1; video 2 is a distractor.
    sim = np.array([[0.9, 0.1, 0.0],
                    [0.2, 0.5, 0.3],   # video 0 ranks 3rd for text 1
                    [0.1, 0.8, 0.9],   # video 1 ranks 2nd for text 2
                    [0.0, 0.7, 0.1]])
    m = retrieval_metrics(sim, [0, 0, 1, 1])
    assert m["t2v_R1"] == 50.0 and m["t2v_MnR"] == pytest.approx((1 + 3 + 2 + 1) / 4)
    assert m["t2v_MdR"] == 1.5  # median of [1, 1, 2, 3]
    # video 0: best correct text 0 (0.9) beats every wrong text; video 1: best correct text 3 (0.8) -> rank 1.
    assert m["v2t_R1"] == 100.0 and m["v2t_MnR"] == 1.0


def test_ties_count_against_the_query():
    m = retrieval_metrics(np.zeros((4, 4)), [0, 1, 2, 3])
    assert m["t2v_R1"] == 0.0 and m["t2v_MdR"] == 4.0 and m["v2t_MnR"] == 4.0
    nan = np.eye(3)
    nan[1, 1] = np.nan  # a NaN score is never a hit
    assert retrieval_metrics(nan, [0, 1, 2])["t2v_R1"] == pytest.approx(200 / 3)


def test_permuting_texts_permutes_t2v_ranks():
    """Each text's rank depends only on that text's own row (no pooling conditioned on another caption)."""
    rng = np.random.default_rng(1)
    sim = rng.normal(size=(30, 10))
    t2v = list(rng.integers(0, 10, 30))
    perm = rng.permutation(30)
    from calm_study.tasks.retrieval.metrics import t2v_ranks
    a = t2v_ranks(torch.tensor(sim), torch.tensor(t2v))
    b = t2v_ranks(torch.tensor(sim[perm]), torch.tensor(t2v)[perm])
    assert torch.equal(a[perm], b)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="text_to_video"):
        retrieval_metrics(np.zeros((3, 2)), [0, 1])
    with pytest.raises(ValueError, match="outside"):
        retrieval_metrics(np.zeros((2, 2)), [0, 2])
