"""`embodied report`: one self-contained HTML file with curves, success tables, inline videos; user strings escaped."""

from __future__ import annotations

import json
from html.parser import HTMLParser

from embodied.cli import main


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.srcs += [v for k, v in attrs if k in ("src", "href") and v]


def test_report_is_self_contained_with_curves_tables_and_videos(report_inputs, capsys):
    tmp = report_inputs
    out = tmp / "report.html"
    assert main(["report", str(tmp / "run"), str(tmp / "eval-seen"), str(tmp / "eval-paraphrase" / "eval.json"), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    text = out.read_text()
    p = _Tags()
    p.feed(text)
    assert p.tags.count("svg") >= 2  # training curves and the success plot
    assert p.tags.count("table") == 3  # per env, per family, targets
    assert p.tags.count("tr") == (1 + 2) + (1 + 2 + 2) + (1 + 2)  # header + rows: envs; families and means; two targets
    assert "paraphrase_vs_seen" in text and "model_vs_expert" in text
    assert "paraphrase" in text and "seen" in text
    assert p.tags.count("video") == 1
    assert all(s.startswith("data:") for s in p.srcs)  # nothing outside the file


def test_user_strings_are_escaped(report_inputs, tmp_path):
    tmp = report_inputs
    data = json.loads((tmp / "eval-seen" / "eval.json").read_text())
    data["rows"][0]["env_id"] = "<script>alert('x')</script>"
    data["rows"][0]["family"] = "reach & <b>bold</b>"
    data["rows"][0]["videos"][0]["instruction"] = "push the <i>red</i> cube"
    evil = tmp_path / "x&y" / "eval.json"
    evil.parent.mkdir()
    evil.write_text(json.dumps(data))
    out = tmp_path / "r.html"
    assert main(["report", str(evil), "--out", str(out)]) == 0
    text = out.read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "<b>bold</b>" not in text and "x&amp;y" in text
    assert "<i>" not in text and "push the &lt;i&gt;red&lt;/i&gt; cube" in text


def test_aggregates_never_pool_two_models(report_inputs, tmp_path):
    data = json.loads((report_inputs / "eval-seen" / "eval.json").read_text())
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval.json").write_text(json.dumps({**data, "ckpt": f"runs/model-{name}"}))
    out = tmp_path / "r.html"
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.count("<table class='families'>") == 2 and "Per task family of runs/model-b" in text
    assert text.count("<tr class='mean'>") == 2  # one mean row each, over that model's episodes only


def test_report_refuses_what_it_cannot_read(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 2
    assert "nothing to report" in capsys.readouterr().err
    assert main(["report", "--out", str(tmp_path / "r.html")]) == 2
    assert not (tmp_path / "r.html").exists()


def test_demo_report_step_evaluates_and_reports_then_reuses(report_inputs, tmp_path, capsys):
    from embodied.cli import _demo_report

    report = _demo_report(str(report_inputs / "run"), tmp_path, force=False, episodes=1)
    text = open(report).read()
    from embodied.cli import DEMO_ENVS

    assert "paraphrase" in text and text.count("<video") == len(DEMO_ENVS)  # one rollout per env, seen instructions
    assert "[5/5] evaluating" in capsys.readouterr().out
    _demo_report(str(report_inputs / "run"), tmp_path, force=False, episodes=1)
    assert "reusing" in capsys.readouterr().out
