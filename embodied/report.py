"""``embodied report``: one self-contained HTML file from training runs and evaluations.

Sections: training curves (``metrics.jsonl`` of each run: train loss, held-out action NLL
and imagined-state error), per-task success with 95% intervals and the expert beside it
(``eval.json`` of each evaluation; several evaluations with different instruction sets show
seen vs held-out side by side), and the rollout videos playing inline. Plots are SVG from
matplotlib and videos are data URIs, so the file needs nothing beside it. Every string that
comes from a user or a file (instructions, env ids, paths) is HTML-escaped.
An ``adapt_curve.json`` of ``embodied bench adapt`` (or a folder holding one) adds a
section: success against K demonstrations per adaptation method, and what each point spent.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from embodied.errors import EmbodiedError

MAX_VIDEO_BYTES = 8 * 2**20
"""Larger videos are linked by path instead of embedded."""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _find(path: Path) -> tuple[list[Path], list[Path]]:
    """Runs (folders with metrics.jsonl) and evaluations (eval.json files) under ``path``."""
    if path.is_file() and path.name == "eval.json":
        return [], [path]
    if not path.is_dir():
        raise EmbodiedError(f"{path} is neither a run folder nor an evaluation; give a --out of `embodied train` or `embodied eval`")
    runs = [path] if (path / "metrics.jsonl").exists() else []
    evals = sorted(path.glob("eval.json")) + sorted(path.glob("*/eval.json"))
    if not runs and not evals:
        raise EmbodiedError(f"nothing to report in {path}: no metrics.jsonl (a training run) and no eval.json (an evaluation)")
    return runs, evals


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _curves(run: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for r in rows:  # a resumed run may repeat steps: keep the last record of each
        latest[(r["split"], int(r["step"]))] = r
    panels = [("train", "loss", "training loss"), ("eval", "action_nll", "held-out action NLL"), ("eval", "state_err_5", "held-out state error after 5 imagined steps")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3))
    for ax, (split, key, title) in zip(axes, panels):
        pts = sorted((s, r[key]) for (sp, s), r in latest.items() if sp == split and key in r)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 20 else None)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
    return _svg(fig)


def _success_plot(rows: list[dict[str, Any]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [f"{r['env_id'].split('/')[-1]}\n{r['instructions']}" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(rows)), 3))
    s = np.array([r["success"] for r in rows])
    lo = np.array([r["success_ci"][0] for r in rows])
    hi = np.array([r["success_ci"][1] for r in rows])
    ax.bar(x - 0.2, s, 0.4, yerr=[s - lo, hi - s], capsize=3, label="model")
    if all("expert_success" in r for r in rows):
        ax.bar(x + 0.2, [r["expert_success"] for r in rows], 0.4, label="expert", alpha=0.6)
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success (95% CI)")
    ax.legend(fontsize=8)
    return _svg(fig)


def _video(path: str) -> str:
    p = Path(path)
    if not p.exists():
        return f"<p>missing video {_e(path)}</p>"
    if p.stat().st_size > MAX_VIDEO_BYTES:
        return f'<p><a href="{_e(p.resolve().as_uri())}">{_e(p.name)}</a></p>'
    data = base64.b64encode(p.read_bytes()).decode()
    return f'<video controls muted loop playsinline width="256" src="data:video/mp4;base64,{data}"></video>'


def build_report(paths: list[str], out: str) -> dict[str, Any]:
    """Write the HTML report of ``paths`` (run folders, evaluation folders or eval.json files) to ``out``."""
    runs, evals, curves = [], [], []
    for p in paths:
        curve = _adapt_curve_file(Path(p))
        if curve is not None:
            curves.append(curve)
            continue
        r, e = _find(Path(p))
        runs += r
        evals += e
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>embodied report</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
             "video{margin:4px}</style></head><body><h1>embodied report</h1>"]
    for run in runs:
        parts.append(f"<h2>Training: {_e(run)}</h2>{_curves(run)}")
    rows: list[dict[str, Any]] = []
    for ev in evals:
        data = json.loads(ev.read_text())
        for r in data["rows"]:
            rows.append({**r, "_source": str(ev)})
    if rows:
        parts.append("<h2>Success per task (95% Wilson intervals; expert on the same seeds)</h2>")
        parts.append(_success_plot(rows))
        parts.append("<table><tr><th>env</th><th>family</th><th>instructions</th><th>episodes</th><th>success [95% CI]</th>"
                     "<th>expert</th><th>mean cost</th><th>mean length</th><th>invalid</th><th>from</th></tr>")
        for r in rows:
            lo, hi = r["success_ci"]
            parts.append(
                f"<tr><td>{_e(r['env_id'])}</td><td>{_e(r['family'])}</td><td>{_e(r['instructions'])}</td><td>{int(r['episodes'])}</td>"
                f"<td>{r['success']:.2f} [{lo:.2f}, {hi:.2f}]</td><td>{r.get('expert_success', float('nan')):.2f}</td>"
                f"<td>{r['mean_cost']:.2f}</td><td>{r.get('mean_length', 0):.0f}</td><td>{int(r.get('invalid', 0))}</td><td>{_e(r['_source'])}</td></tr>"
            )
        parts.append("</table>")
        videos = [(r, v) for r in rows for v in r.get("videos", [])]
        if videos:
            parts.append("<h2>Rollouts</h2>")
            for r, v in videos:
                parts.append(f"<figure>{_video(v['video'])}<figcaption>{_e(r['env_id'])}, seed {int(v['seed'])}, "
                             f"success {bool(v['success'])}</figcaption></figure>")
    for curve in curves:
        parts.append(_adapt_section(curve))
    parts.append("</body></html>")
    out_p = Path(out)
    out_p.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_p.with_name(f".{out_p.name}.tmp")
    tmp.write_text("\n".join(parts))
    tmp.replace(out_p)
    return {"out": str(out_p), "runs": len(runs), "evaluations": len(evals), "rows": len(rows), "curves": len(curves), "bytes": out_p.stat().st_size}


# ---------------------------------------------------------------------------- few-shot adaptation
ADAPT_CURVE = "adapt_curve.json"
"""The file ``embodied bench adapt`` writes (``kind`` embodied-adapt-curve)."""


def _adapt_curve_file(path: Path) -> Path | None:
    """``path`` itself or ``path/adapt_curve.json`` when it is an adaptation curve, else None."""
    candidate = path / ADAPT_CURVE if path.is_dir() else path
    return candidate if candidate.name == ADAPT_CURVE and candidate.is_file() else None


def _adapt_plot(curve: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for method in dict.fromkeys(p["method"] for p in curve["points"]):
        pts = sorted((p["k"], p["success"], *p["success_ci"]) for p in curve["points"] if p["method"] == method)
        ks, s, lo, hi = (list(c) for c in zip(*pts))
        ax.errorbar(ks, s, yerr=[[a - b for a, b in zip(s, lo)], [b - a for a, b in zip(s, hi)]], marker="o", capsize=3, label=method)
    ax.axhline(curve["zero_shot"]["success"], color="grey", linestyle="--", label="zero-shot")
    if curve.get("expert"):
        ax.axhline(curve["expert"]["success"], color="black", linestyle=":", label="expert")
    ax.set_xscale("log")
    ax.set_xlabel("K demonstrations")
    ax.set_ylabel("success (95% CI)")
    ax.set_ylim(-0.02, 1.05)
    ax.legend(fontsize=7)
    return _svg(fig)


def _adapt_section(path: Path) -> str:
    """Success against K per method (95% Wilson intervals), zero-shot and expert lines, and what each point spent."""
    try:
        curve = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise EmbodiedError(f"cannot read {path} ({e}); rerun `embodied bench adapt`") from None
    if not isinstance(curve, dict) or curve.get("kind") != "embodied-adapt-curve":
        raise EmbodiedError(f"{path} is not an adaptation curve of `embodied bench adapt`")
    z = curve["zero_shot"]
    parts = [f"<h2>Few-shot adaptation: {_e(curve['env_id'])}</h2>",
             f"<p>base {_e(curve['base'])}; zero-shot success {z['success']:.2f} [{z['success_ci'][0]:.2f}, {z['success_ci'][1]:.2f}]; "
             f"scratch: {_e(curve.get('scratch', ''))}; {int(z['episodes'])} evaluation episodes per point; {_e(curve.get('date', ''))}, {_e(curve.get('machine', ''))}</p>"]
    if curve["points"]:
        parts.append(_adapt_plot(curve))
    parts.append("<table><tr><th>K</th><th>method</th><th>success [95% CI]</th><th>demos</th><th>gradient steps</th>"
                 "<th>trainable parameters</th><th>fitting s</th></tr>")
    for p in sorted(curve["points"], key=lambda p: (p["k"], p["method"])):
        sp = p["spend"]
        parts.append(f"<tr><td>{int(p['k'])}</td><td>{_e(p['method'])}</td><td>{p['success']:.2f} [{p['success_ci'][0]:.2f}, {p['success_ci'][1]:.2f}]</td>"
                     f"<td>{int(sp['demos'])}</td><td>{int(sp['gradient_steps'])}</td><td>{int(sp['trainable_params']):,}</td><td>{float(sp['wall_s']):.1f}</td></tr>")
    parts.append("</table>")
    for m in curve.get("missed_targets", []):
        parts.append(f"<p>target missed: {_e(m)}</p>")
    return "\n".join(parts)
