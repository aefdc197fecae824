"""Video data pipeline: decoding, preprocessing, datasets and the synthetic demo dataset.

The package imports none of its modules: a study's driver reads annotations (readers/, sources.py) without
importing torch and torchvision, which only the processes that decode or train need (docs/performance.md).
"""
