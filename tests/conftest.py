"""Shared fixtures: a tiny trial config on a small synthetic dataset (generated once per test session)."""

from pathlib import Path

import pytest

from calm_study.validate import trial_from_dict

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

TINY = {
    "model": {"clip": "calm-tiny", "pretrained": None},
    "anchors": {"source": "charades", "count": 20},
    "data": {"num_frames": 4, "synthetic": {"num_train_videos": 24, "num_test_videos": 8, "captions_per_video": 2,
                                            "frames_per_video": 8}},
    "optim": {"lr_clip": 1e-3, "lr_new": 1e-3},
    "train": {"epochs": 2, "batch_size": 16, "log_every": 0},
}


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("calm_cache")


@pytest.fixture
def tiny_doc(data_cache) -> dict:
    """A trial document for calm-tiny on a small synthetic dataset; tests copy and edit it."""
    import copy

    doc = copy.deepcopy(TINY)
    doc["data"]["cache_dir"] = str(data_cache)
    return doc


@pytest.fixture
def tiny_cfg(tiny_doc):
    return trial_from_dict(tiny_doc)
