"""Optuna search spaces in study files: distributions per trial key, checked strictly.

    search:
      method: optuna            # grid (default) | optuna
      num_samples: 16           # trials Optuna proposes
      sampler: tpe              # tpe | random
      sampler_seed: 0
      space:
        anchors.tau: {uniform: [5.0, 30.0]}
        loss.alpha: {loguniform: [0.01, 1.0]}
        vae.latent_dim: {choice: [64, 128, 256]}
        anchors.count: {int: [20, 157]}          # inclusive bounds
        train.batch_size: {qint: [16, 64, 16]}   # inclusive bounds, step

Ray's OptunaSearch cannot take grid_search values, so `optuna` and `grid`/`combinations` do not mix, and each sampled
configuration runs with one seed (Tune's Repeater, the way to repeat seeds, has an open resume bug).
"""

from __future__ import annotations

from typing import Any

DISTRIBUTIONS = {"choice": "a non-empty list of values", "uniform": "[low, high]", "loguniform": "[low, high], low > 0",
                 "int": "[low, high] integers (inclusive)", "qint": "[low, high, step] integers (inclusive)"}
SAMPLERS = ("tpe", "random")


def parse_distribution(key: str, spec: Any) -> tuple[tuple[str, list] | None, list[str]]:
    """((kind, args), []) for a valid `{kind: args}` mapping, else (None, [messages])."""
    where = f"search.space.{key}"
    if not isinstance(spec, dict) or len(spec) != 1:
        return None, [f"{where}: expected one mapping entry {{distribution: arguments}}, e.g. {{uniform: [0.0, 1.0]}}; "
                      f"distributions: {', '.join(DISTRIBUTIONS)}"]
    (kind, args), = spec.items()
    if kind not in DISTRIBUTIONS:
        from calm_study.configio import did_you_mean

        return None, [f"{where}: unknown distribution {kind!r}{did_you_mean(kind, DISTRIBUTIONS)}; valid: "
                      f"{', '.join(DISTRIBUTIONS)}"]
    bad = [f"{where}: {kind} takes {DISTRIBUTIONS[kind]}, got {args!r}"]
    if not isinstance(args, list) or not args:
        return None, bad
    if kind == "choice":
        return (kind, args), []
    numbers = all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
    if not numbers or len(args) != (3 if kind == "qint" else 2) or args[0] >= args[1]:
        return None, bad
    if kind in ("int", "qint") and not all(isinstance(a, int) for a in args):
        return None, bad
    if kind == "loguniform" and args[0] <= 0:
        return None, bad
    if kind == "qint" and args[2] < 1:
        return None, bad
    return (kind, args), []


def parse_space(space: dict[str, Any]) -> tuple[dict[str, tuple[str, list]], list[str]]:
    parsed, errors = {}, []
    for key, spec in space.items():
        dist, errs = parse_distribution(key, spec)
        errors += errs
        if dist:
            parsed[key] = dist
    return parsed, errors


def edge_rows(space: dict[str, tuple[str, list]]) -> list[dict[str, Any]]:
    """Configurations at the edges of the space (every bound, every choice), to check before any trial runs that the
    whole space gives valid trial configs."""
    rows: list[dict[str, Any]] = []
    lows = {k: (args[0] if kind != "choice" else args[0]) for k, (kind, args) in space.items()}
    rows.append(dict(lows))
    for key, (kind, args) in space.items():
        values = args if kind == "choice" else [args[1] if kind != "qint" else args[0] + (args[1] - args[0]) //
                                                args[2] * args[2]]
        for v in values:
            if v != lows[key]:
                rows.append({**lows, key: v})
    return rows
