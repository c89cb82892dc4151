"""The ``embodied adapt`` and ``embodied bench adapt`` commands (heavy modules imported inside the handlers)."""

from __future__ import annotations

import sys
from typing import Callable

from .cli_data import print_json
from .config import AdaptConfig, AdaptRunConfig, BenchAdaptConfig


def cmd_adapt(run: AdaptRunConfig, cfg: AdaptConfig) -> int:
    from embodied.adapt_data import adapt_from_stores, format_record

    r = adapt_from_stores(run, cfg)
    print_json(r) if run.json else print(format_record(r))
    return 0


def cmd_bench_adapt(cfg: BenchAdaptConfig) -> int:
    from embodied.bench_adapt import adapt_curve, format_curve

    curve = adapt_curve(cfg, log=lambda s: print(s, file=sys.stderr))
    print_json(curve) if cfg.json else print(format_curve(curve))
    return 0


ADAPT_COMMANDS: dict[tuple[str, ...], tuple[type | tuple[type, ...], Callable[..., int], str]] = {
    ("adapt",): ((AdaptRunConfig, AdaptConfig), cmd_adapt,
                 "fine-tune a trained model on K demonstrations of a new environment (full, head, ...); records demos, steps, parameters, time"),
    ("bench", "adapt"): (BenchAdaptConfig, cmd_bench_adapt,
                         "success against K demonstrations of a held-out env: zero-shot, adapted and from-scratch, with 95%% CIs"),
}
"""Commands added to :data:`embodied.cli.COMMANDS`."""

__all__ = ["ADAPT_COMMANDS", "cmd_adapt", "cmd_bench_adapt"]
