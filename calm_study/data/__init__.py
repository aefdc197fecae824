"""Video data pipeline: decoding, preprocessing, datasets and the synthetic demo dataset."""

from calm_study.data.dataset import EvalVideos, TrainPairs, collate
from calm_study.data.records import VideoRecord
from calm_study.data.synthetic import (
    DOMAINS,
    GENERATOR_VERSION,
    ensure_synthetic_dataset,
    load_synthetic_annotations,
    load_synthetic_split,
)
from calm_study.data.video import (
    CLIP_MEAN,
    CLIP_STD,
    VideoDecodeError,
    preprocess_frames,
    read_video,
    sample_frame_indices,
)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DOMAINS",
    "GENERATOR_VERSION",
    "EvalVideos",
    "TrainPairs",
    "VideoDecodeError",
    "VideoRecord",
    "collate",
    "ensure_synthetic_dataset",
    "load_synthetic_annotations",
    "load_synthetic_split",
    "preprocess_frames",
    "read_video",
    "sample_frame_indices",
]
