"""``embodied report``: one self-contained HTML file from training runs and evaluations.

Sections: training curves (``metrics.jsonl`` of each run: train loss, held-out action NLL
and imagined-state error), per-task success with 95% intervals and the expert beside it
(``eval.json`` of each evaluation; several evaluations with different instruction sets show
seen vs held-out side by side), the same pooled per task family with the model / expert ratio
and the quality targets (:func:`embodied.evaluate.evaluation_summary` over all rows given), and
the rollout videos playing inline with their instructions. Plots are SVG from
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
from embodied.evaluate import evaluation_summary

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


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _aggregate_tables(summary: dict[str, Any], model: str | None = None) -> list[str]:
    """HTML tables of :func:`embodied.evaluate.evaluation_summary`: per task family, means over families, targets;
    ``model`` names the checkpoint when the report holds several."""
    of = f" of {_e(model)}" if model else ""
    parts = [f"<h2>Per task family{of} (pooled over its envs; 95% Wilson intervals)</h2>",
             "<table class='families'><tr><th>family</th><th>split</th><th>instructions</th><th>envs</th><th>episodes</th>"
             "<th>success [95% CI]</th><th>expert [95% CI]</th><th>model / expert</th></tr>"]
    for f in summary["families"]:
        lo, hi = f["success_ci"]
        elo, ehi = f.get("expert_success_ci", (None, None))
        expert = f"{f['expert_success']:.2f} [{elo:.2f}, {ehi:.2f}]" if "expert_success" in f else "n/a"
        parts.append(f"<tr><td>{_e(f['family'])}</td><td>{_e(f['split'])}</td><td>{_e(f['instructions'])}</td><td>{int(f['envs'])}</td>"
                     f"<td>{int(f['episodes'])}</td><td>{f['success']:.2f} [{lo:.2f}, {hi:.2f}]</td><td>{expert}</td>"
                     f"<td>{_num(f['model_vs_expert'])}</td></tr>")
    for o in summary["overall"]:
        parts.append(f"<tr class='mean'><th colspan='5'>mean over {len(o['families'])} families ({_e(o['split'])}, {_e(o['instructions'])})</th>"
                     f"<td>{_num(o['mean_success'])}</td><td>{_num(o['mean_expert_success'])}</td><td>{_num(o['model_vs_expert'])}</td></tr>")
    parts.append("</table>")
    if summary["targets"]:
        parts.append(f"<h2>Targets{of} (train environments)</h2><table class='targets'><tr><th>ratio</th><th>value</th><th>target</th><th>holds</th><th>what</th></tr>")
        for t in summary["targets"]:
            verdict = {True: "yes", False: "no", None: "undefined"}[t["met"]]
            parts.append(f"<tr><td>{_e(t['name'])}</td><td>{_num(t['value'])}</td><td>&ge; {t['target']:.2f}</td><td>{verdict}</td><td>{_e(t['what'])}</td></tr>")
        parts.append("</table>")
    return parts


def _safety_plot(rows: list[dict[str, Any]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [f"{r['env_id'].split('/')[-1]}\n{r.get('shield', 'none')}" for r in rows]
    x = np.arange(len(rows))
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.6 * len(rows)), 3))
    for ax, key, title in ((axes[0], "violations_per_episode", "violations per episode (95% CI)"), (axes[1], "success", "success (95% CI)")):
        v = np.array([r[key] for r in rows])
        ci = np.array([r[f"{key}_ci"] for r in rows])
        ax.bar(x, v, 0.6, yerr=[np.maximum(v - ci[:, 0], 0), np.maximum(ci[:, 1] - v, 0)], capsize=3,
               color=["#999" if r.get("shield", "none") == "none" else "#3a7" for r in rows])
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_title(title, fontsize=9)
    return _svg(fig)


def safety_section(rows: list[dict[str, Any]]) -> str:
    """HTML of the safety results: violations, violation rate, interventions and success per env and shield,
    and a plot of violations and success (empty when no row has safety numbers)."""
    rows = [r for r in rows if "violations_per_episode" in r]
    shown = {r["env_id"] for r in rows if r.get("shield", "none") != "none" or r.get("constraints") or r["violations_per_episode"] > 0}
    rows = [r for r in rows if r["env_id"] in shown]  # envs where safety is at stake: filtered, constrained or violated
    if not rows:
        return ""

    def ci(r: dict[str, Any], key: str, fmt: str = ".2f") -> str:
        if key not in r:
            return "-"
        lo, hi = r.get(f"{key}_ci", (r[key], r[key]))
        return f"{r[key]:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"

    parts = ["<h2>Safety (violations: indicator costs summed over each episode, a diverged episode counts one; "
             "95% intervals: normal for per-episode means, Wilson for rates; red-bordered video frames: the filter intervened)</h2>",
             _safety_plot(rows),
             "<table><tr><th>env</th><th>shield</th><th>constraints</th><th>episodes</th><th>violations / episode</th>"
             "<th>episodes with a violation</th><th>interventions / episode</th><th>success</th></tr>"]
    for r in rows:
        parts.append(
            f"<tr><td>{_e(r['env_id'])}</td><td>{_e(r.get('shield', 'none'))}</td><td>{_e('; '.join(r.get('constraints', [])) or '-')}</td>"
            f"<td>{int(r['episodes'])}</td><td>{ci(r, 'violations_per_episode')}</td><td>{ci(r, 'violation_rate')}</td>"
            f"<td>{ci(r, 'interventions_per_episode', '.1f')}</td><td>{ci(r, 'success')}</td></tr>"
        )
    parts.append("</table>")
    return "\n".join(parts)


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
            rows.append({**r, "_source": str(ev), "_ckpt": str(data.get("ckpt", ev))})
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
        models = list(dict.fromkeys(r["_ckpt"] for r in rows))  # never pool two models' episodes
        for ckpt in models:
            parts += _aggregate_tables(evaluation_summary([r for r in rows if r["_ckpt"] == ckpt]), ckpt if len(models) > 1 else None)
        parts.append(safety_section(rows))
        videos = [(r, v) for r in rows for v in r.get("videos", [])]
        if videos:
            parts.append("<h2>Rollouts</h2>")
            for r, v in videos:
                said = f", &ldquo;{_e(v['instruction'])}&rdquo;" if v.get("instruction") else ""
                shielded = (f", {_e(r.get('shield', 'none'))} shield intervened on {int(v['interventions'])} steps (red border)"
                            if "interventions" in v else "")
                parts.append(f"<figure>{_video(v['video'])}<figcaption>{_e(r['env_id'])}, seed {int(v['seed'])}{said}, "
                             f"success {bool(v['success'])}{shielded}</figcaption></figure>")
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
