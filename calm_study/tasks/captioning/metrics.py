"""Caption metrics: BLEU-4, METEOR, ROUGE-L and CIDEr(-D), x100, with pycocoevalcap's scorers (docs/metrics.md).

The standard protocol of captioning papers: references and hypotheses both go through pycocoevalcap's PTBTokenizer
(Stanford CoreNLP, lower-cased, punctuation dropped), every reference of a video is kept, one hypothesis per video;
BLEU is corpus-level, CIDEr is CIDEr-D with its IDF from this evaluation set's references. METEOR and the tokenizer
run Java: `require_java` says so before any training starts.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from calm_study.external import require_java
from calm_study.names import CAPTION_METRICS

_meteor = None


def _meteor_scorer():
    """One METEOR process per Python process: starting it (a JVM loading its paraphrase tables) takes seconds."""
    global _meteor
    if _meteor is None or _meteor.meteor_p.poll() is not None:
        from pycocoevalcap.meteor.meteor import Meteor

        _meteor = Meteor()
    return _meteor


@contextmanager
def _java_stderr_captured() -> Iterator[Callable[[], str]]:
    """Point file descriptor 2 at a temporary file while a Java helper runs: the PTB tokenizer prints a statistics
    line to stderr on every call, which would fill the console with one line per evaluation set and epoch. Yields a
    function returning what was captured, for error messages."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lambda: (tmp.seek(0), tmp.read().decode(errors="replace"))[1]
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def ptb_tokenize(texts: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """{key: [sentence, ...]} -> the same, PTB-tokenised (lower case, punctuation removed)."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    require_java()
    with _java_stderr_captured() as captured:
        try:
            out = PTBTokenizer().tokenize({k: [{"caption": s} for s in v] for k, v in texts.items()})
        except Exception as e:
            raise RuntimeError(f"pycocoevalcap's PTB tokenizer (Java) failed: {e}; its output: "
                               f"{captured()[-2000:] or '(none)'}") from e
        if set(out) != set(texts):
            raise RuntimeError(f"pycocoevalcap's PTB tokenizer (Java) returned {len(out)} of {len(texts)} entries; "
                               f"its output: {captured()[-2000:] or '(none)'}")
    return out


_references: dict[tuple, dict[str, list[str]]] = {}  # an evaluation set's references, tokenised once per process


def _tokenized_references(references: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """The same references are scored every epoch: each Java tokenizer run costs about a second, so keep them."""
    key = tuple((k, tuple(v)) for k, v in sorted(references.items()))
    if key not in _references:
        if len(_references) >= 8:
            _references.pop(next(iter(_references)))
        _references[key] = ptb_tokenize(references)
    return _references[key]


def caption_metrics(references: Mapping[str, Sequence[str]], hypotheses: Mapping[str, str]) -> dict[str, float]:
    """{video: [reference, ...]} and {video: hypothesis} (the same keys) -> {CIDEr, BLEU4, METEOR, ROUGE_L} x100."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if set(references) != set(hypotheses):
        raise ValueError("caption_metrics: references and hypotheses must have the same videos")
    if not references:
        raise ValueError("caption_metrics: no videos to score")
    if any(not refs for refs in references.values()):
        raise ValueError("caption_metrics: every video needs at least one reference")
    gts = _tokenized_references(references)
    res = ptb_tokenize({k: [h] for k, h in hypotheses.items()})
    scores = {
        "CIDEr": Cider().compute_score(gts, res)[0],
        "BLEU4": Bleu(4).compute_score(gts, res, verbose=0)[0][3],
        "METEOR": _meteor_scorer().compute_score(gts, res)[0],
        "ROUGE_L": Rouge().compute_score(gts, res)[0],
    }
    return {name: 100.0 * float(scores[name]) for name in CAPTION_METRICS}
