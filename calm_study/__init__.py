"""calm_study: CALM (class-anchor-aligned generative modeling) for text-video retrieval, and ablation studies on Ray."""

__version__ = "0.1.0"
