"""Tables as Markdown, plain text (the console), LaTeX (booktabs) and CSV (every number, unrounded)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from calm_study.report.cells import Table
from calm_study.report.stats import Summary, verdict

DIGITS = 1  # the paper's precision; the CSV keeps every digit
PRETTY = {"anchors_count": "anchors K", "anchors_source": "anchor source", "loss_align": "alignment loss",
          "loss_alpha": "α (KL weight)", "vae_latent_dim": "latent dim d", "data_train": "training set"}


def pretty(column: str) -> str:
    return PRETTY.get(column, column)


def num(x: float, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:+.{DIGITS}f}" if sign else f"{x:.{DIGITS}f}"


def label_value(v: object) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def _summary(row: pd.Series, key: str) -> Summary:
    return Summary(row[f"{key}_mean"], row[f"{key}_sd"], int(row[f"{key}_n"]), row[f"{key}_ci_lo"],
                   row[f"{key}_ci_hi"])


def cell(s: Summary) -> str:
    if s.n == 0:
        return "—"
    return num(s.mean) if s.n == 1 else f"{num(s.mean)} ± {num(s.sd)}"


def interval(s: Summary) -> str:
    return f"[{num(s.lo)}, {num(s.hi)}]" if s.has_interval else f"n/a (n={s.n})"


def delta(row: pd.Series, key: str) -> tuple[str, str]:
    """(Δ with its interval, the verdict) of a row against its baseline."""
    if row["is_baseline"]:
        return "baseline", ""
    mean, lo, hi, n = row[f"{key}_diff"], row[f"{key}_diff_ci_lo"], row[f"{key}_diff_ci_hi"], int(row[f"{key}_pairs"])
    text = f"{num(mean, True)} [{num(lo, True)}, {num(hi, True)}]" if n >= 2 and not math.isnan(lo) else \
        f"{num(mean, True)} ({n} pair{'s' if n != 1 else ''})"
    said = verdict(row[f"{key}_distinguishable"], n)
    # A zero-width t-interval: every pair differs by the same amount (R@K is quantised on small test sets).
    if said == "yes" and math.isclose(lo, hi, abs_tol=1e-9):
        said = f"yes (identical Δ in all {n} pairs)"
    return text, said


def display(table: Table) -> tuple[list[str], list[list[str]], list[list[bool]]]:
    """(headers, rows of cell texts, which cells are bold) shared by every text format."""
    heads = [pretty(c) for c in table.labels]
    named = [f"{m.group} {m.name}".strip() for m in table.metrics]
    heads += named + ["n"]
    shown = [m for m in table.metrics if m.plot]
    heads += [f"{n} 95% CI" for m, n in zip(table.metrics, named) if m in shown]
    for m, n in zip(table.metrics, named):
        heads += [f"Δ {n} [95% CI]", "distinguishable"] if m.delta else []
    for m, n in zip(table.metrics, named):
        heads += [f"paper {n}", "ours − paper"] if m.paper else []
    rows, bold = [], []
    for _, r in table.frame.iterrows():
        texts = [label_value(r[c]) for c in table.labels]
        flags = [False] * len(texts)
        for m in table.metrics:
            texts.append(cell(_summary(r, m.key)))
            flags.append(bool(r.get(f"{m.key}_in_domain", False)))
        texts.append(str(int(r[f"{table.metrics[0].key}_n"])))
        texts += [interval(_summary(r, m.key)) for m in shown]
        for m in table.metrics:
            texts += list(delta(r, m.key)) if m.delta else []
        for m in table.metrics:
            texts += [num(r[f"{m.key}_paper"]), num(r[f"{m.key}_minus_paper"], True)] if m.paper else []
        rows.append(texts)
        bold.append(flags + [False] * (len(texts) - len(flags)))
    return heads, rows, bold


def unpaired_notes(table: Table) -> list[str]:
    out = []
    for _, r in table.frame.iterrows():
        for m in (m for m in table.metrics if m.delta and r.get(f"{m.key}_unpaired", 0)):
            out.append(f"{m.name} of {', '.join(label_value(r[c]) for c in table.labels) or 'the base arm'}: "
                       f"{int(r[f'{m.key}_unpaired'])} seed(s) without a partner in the baseline were left out of Δ")
    return out


def to_markdown(table: Table, image: str | None = None) -> str:
    heads, rows, bold = display(table)
    lines = [f"## {table.title}", "", f"*{table.caption}*", "", "| " + " | ".join(heads) + " |",
             "|" + "|".join("---" for _ in heads) + "|"]
    lines += ["| " + " | ".join(f"**{t}**" if b else t for t, b in zip(row, flags)) + " |"
              for row, flags in zip(rows, bold)]
    lines += [""] + [f"- {n}" for n in table.notes + unpaired_notes(table)]
    if image:
        lines += ["", f"![{table.title}]({image})"]
    return "\n".join(lines) + "\n"


def to_text(table: Table) -> str:
    heads, rows, bold = display(table)
    rows = [[t + ("*" if b else "") for t, b in zip(row, flags)] for row, flags in zip(rows, bold)]
    widths = [max(len(x) for x in col) for col in zip(heads, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [table.title, table.caption, fmt.format(*heads)] + [fmt.format(*row) for row in rows]
    return "\n".join(lines + [f"  {n}" for n in table.notes + unpaired_notes(table)])


def to_console(table: Table, width: int = 120) -> str:
    """The table in at most `width` columns: labels, metric means, n and the first Δ vs the baseline (metrics are
    dropped from the right until it fits); title and caption wrapped. The report holds every column and note."""
    import textwrap

    heads, rows, _ = display(table)
    n_labels, n_metrics = len(table.labels), len(table.metrics)
    first_delta = next((i for i, h in enumerate(heads) if h.startswith("Δ ")), None)
    metrics = n_metrics

    def columns(k: int) -> list[int]:
        cols = list(range(n_labels + k)) + [n_labels + n_metrics]  # labels, k metrics, n
        return cols + ([first_delta] if first_delta is not None else [])

    def render(cols: list[int]) -> list[str]:
        widths = [max(len(r[c]) for r in [heads, *rows]) for c in cols]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        return [fmt.format(*(r[c] for c in cols)).rstrip() for r in [heads, *rows]]

    lines = render(columns(metrics))
    while metrics > 1 and max(map(len, lines)) > width:
        metrics -= 1
        lines = render(columns(metrics))
    wrap = [textwrap.fill(table.title, width), textwrap.fill(table.caption, width)]
    left = n_metrics - metrics
    more = f" and {left} more metric(s)" if left else ""
    return "\n".join(wrap + lines + [f"  (95% intervals, paper values{more}: the report)"])


_TEX = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$", "{": r"\{",
        "}": r"\}", "±": r"$\pm$", "—": "--", "−": "-", "Δ": r"$\Delta$", "→": r"$\to$", "×": r"$\times$",
        "α": r"$\alpha$", "@": "@"}


def tex(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def to_latex(table: Table) -> str:
    heads, rows, bold = display(table)
    n_labels = len(table.labels)
    spec = "l" * n_labels + "r" * (len(heads) - n_labels)
    body = [" & ".join(rf"\textbf{{{tex(t)}}}" if b else tex(t) for t, b in zip(row, flags)) + r" \\"
            for row, flags in zip(rows, bold)]
    return "\n".join([r"% needs \usepackage{booktabs}", r"\begin{table}[t]", r"\centering", r"\small",
                      rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
                      " & ".join(tex(h) for h in heads) + r" \\", r"\midrule", *body, r"\bottomrule",
                      r"\end{tabular}", rf"\caption{{{tex(table.title)}: {tex(table.caption)}}}",
                      rf"\label{{tab:{table.key}}}", r"\end{table}"]) + "\n"


def write_files(table: Table, out: Path) -> list[Path]:
    """<key>.csv (every number) and <key>.tex."""
    csv, tex_path = out / f"{table.key}.csv", out / f"{table.key}.tex"
    table.frame.rename(columns={"unit": "arm_id" if table.key != "drops" else "method"}).to_csv(csv, index=False)
    tex_path.write_text(to_latex(table), encoding="utf-8")
    return [csv, tex_path]
