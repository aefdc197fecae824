"""clip_archs reads open_clip's model config files without importing open_clip: it must read them as open_clip does.
The oracle is open_clip's own registry (with calm_study's tiny architectures added)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import open_clip

from calm_study import clip_archs


def test_every_architecture_and_its_config_match_open_clips_registry():
    clip_archs.register_tiny_models()
    assert clip_archs.list_archs() == open_clip.list_models()  # same names, same order (did-you-mean lists them)
    for arch in open_clip.list_models():
        assert clip_archs.model_config(arch) == open_clip.get_model_config(arch), arch
    assert clip_archs.model_config("no-such-arch") is None


def test_sizes_and_widths_agree_with_a_built_model():
    clip_archs.register_tiny_models()
    model = open_clip.create_model("calm-tiny")
    assert clip_archs.image_size("calm-tiny") == clip_archs.side(model.visual.image_size)
    assert clip_archs.embed_width("calm-tiny") == model.visual.output_dim
    assert clip_archs.text_width("calm-tiny") == model.transformer.width
    assert clip_archs.image_size("ViT-B-32") == 224 and clip_archs.embed_width("ViT-B-32") == 512


def test_a_returned_config_is_a_copy():
    cfg = clip_archs.model_config("calm-tiny")
    cfg["embed_dim"] = -1
    assert clip_archs.model_config("calm-tiny")["embed_dim"] != -1


def test_validating_a_study_imports_neither_torch_nor_open_clip():
    """What makes `validate`, `status` and a study's driver start in well under a second: the registries are read
    without torch (their code paths are named, calm_study/lazy.py), open_clip (with torchvision and torch._dynamo) is
    imported only where a model is built. A new top-level import on that path fails here, for every shipped study."""
    code = ("import sys, json, glob; from calm_study.study.spec import load_study; "
            "[load_study(path, 'demo', []) for path in sorted(glob.glob('studies/*.yaml'))]; "
            "load_study('studies/anchor_ablation.yaml', 'demo', ['model.frozen=true', 'anchors.encode=once']); "
            "import calm_study.study.ray_runner; "
            "print(json.dumps([m for m in ('torch', 'open_clip', 'torchvision') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
