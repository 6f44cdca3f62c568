"""``optscale pool import | validate | info``."""

from __future__ import annotations

import argparse
import json

from optscale.cli import build_parser, main
from optscale.pool import load_pool

SC = "pools/selfconsistency-codex"
PRM = "pools/prm-bon-fragments"


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_import_selfconsistency_json(shared_data, tmp_path, capsys):
    out = tmp_path / "addsub.jsonl"
    code, stdout, _ = _run(capsys, "pool", "import", str(shared_data / SC / "addsub_output_sc_002.normalized.jsonl"),
                           "-o", str(out), "--no-text", "--json")
    assert code == 0
    s = json.loads(stdout)
    assert s["format"] == "selfconsistency" and s["problems"] == 395 and s["samples"] == 15800
    assert s["correct_samples"] == 12983
    pool = load_pool(out)
    assert len(pool.problems) == 395 and pool.problems[0].samples[0].text is None


def test_import_truncated_fails_then_skips(shared_data, tmp_path, capsys):
    src = shared_data / PRM / "BayesPRM-Search__n256_truncated.jsonl"
    out = tmp_path / "n256.jsonl"
    code, _, err = _run(capsys, "pool", "import", str(src), "-o", str(out))
    assert code == 2
    assert str(src) in err and "line 4" in err and "truncated" in err and "Traceback" not in err
    assert not out.exists()
    code, stdout, err = _run(capsys, "pool", "import", str(src), "--skip-truncated-last", "--agg", "last",
                             "--no-text", "-o", str(out), "--json")
    assert code == 0
    # the library warns through `warnings`; the CLI prints each warning as one line on stderr
    assert "optscale pool: warning:" in err and "line 4" in err and "truncated last line" in err
    s = json.loads(stdout)
    assert s["problems"] == 3 and s["samples"] == 768 and len(s["notes"]) == 1


def test_import_search_and_learn_table(shared_data, tmp_path, capsys):
    out = tmp_path / "bon.jsonl"
    code, stdout, _ = _run(capsys, "pool", "import", str(shared_data / PRM / "BayesPRM-Search__data_previous_n4.jsonl"),
                           "--format", "search-and-learn", "-o", str(out))
    assert code == 0
    fields = dict(line.split(None, 1) for line in stdout.splitlines()[1:])
    assert (fields["problems"], fields["samples"], fields["correct_samples"]) == ("10", "40", "17")
    assert fields["format"] == "search-and-learn" and fields["output"] == str(out)
    assert stdout.splitlines()[0].endswith(f"(search-and-learn) -> {out}")
    assert all(s.tokens is not None for p in load_pool(out).problems for s in p.samples)


def test_import_option_for_another_format_is_an_error(shared_data, tmp_path, capsys):
    code, _, err = _run(capsys, "pool", "import", str(shared_data / SC / "aqua_output_sc_001.normalized.jsonl"),
                        "--agg", "min", "-o", str(tmp_path / "x.jsonl"))
    assert code == 2 and "--agg" in err and "search-and-learn" in err


def test_import_optscale_with_prompts(shared_data, tmp_path, capsys):
    prompts_path = shared_data / "optscale-paper/prompts/aime24.json"
    prompts = json.loads(prompts_path.read_text())
    items = [{"id": k, "output": "", "n": 2, "score": {
        "problem": [it["problem"]], "completions": [[f"\\boxed{{{it['answer']}}}", "\\boxed{0}"]],
        "scores": [[0.7, 0.4]], "last_scores": [[0.6, 0.3]], "pred": [""], "completion_tokens": [[10, 20]]}}
        for k, it in enumerate(prompts)]
    src = tmp_path / "aime.json"
    src.write_text(json.dumps(items))
    out = tmp_path / "aime.jsonl"
    code, stdout, _ = _run(capsys, "pool", "import", str(src), "--prompts", str(prompts_path), "-o", str(out), "--json")
    assert code == 0
    s = json.loads(stdout)
    assert s["format"] == "optscale" and s["problems"] == 30 and s["correct_samples"] == 30
    assert s["per_sample_accuracy"] == 0.5 and s["mean_tokens"] == 15


def test_validate(tmp_path, capsys):
    good = tmp_path / "good.jsonl"
    good.write_text('{"id": "a", "gold": "1", "samples": [{"answer": "1", "score": 0.5, "tokens": 3}]}\n')
    code, stdout, _ = _run(capsys, "pool", "validate", str(good))
    assert code == 0 and "valid pool" in stdout
    code, stdout, _ = _run(capsys, "pool", "validate", str(good), "--json")
    assert code == 0 and json.loads(stdout)["valid"] is True

    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text() + '{"id": "b", "samples": [{"answer": "1", "score": 7}]}\n')
    code, stdout, err = _run(capsys, "pool", "validate", str(bad))
    assert code == 2 and stdout == ""
    assert f"{bad}, line 2, field 'samples[0].score': must be in [0, 1], got 7" in err
    code, stdout, _ = _run(capsys, "pool", "validate", str(bad), "--json")
    d = json.loads(stdout)
    assert code == 2 and d["valid"] is False and d["line"] == 2 and d["field"] == "samples[0].score"


def test_validate_truncated(tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    path.write_text('{"id": "a", "samples": [{"answer": "1", "correct": true}]}\n{"id": "b", "sam')
    code, _, err = _run(capsys, "pool", "validate", str(path))
    assert code == 2 and "line 2: truncated last line" in err
    code, stdout, err = _run(capsys, "pool", "validate", str(path), "--skip-truncated-last", "--json")
    assert code == 0 and json.loads(stdout)["problems"] == 1
    assert "optscale pool: warning:" in err and "line 2" in err


def test_info(tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "gold": "\\\\frac{1}{2}", "samples": [{"answer": "1/2"}, {"answer": "0.5"}, '
                    '{"answer": "3"}]}\n')
    code, stdout, _ = _run(capsys, "pool", "info", str(path), "--equiv", "math", "--json")
    s = json.loads(stdout)
    assert code == 0 and s["equiv"] == "math" and s["correct_samples"] == 2 and s["majority_accuracy"] == 1.0
    code, stdout, _ = _run(capsys, "pool", "info", str(path))
    assert code == 0 and "majority_accuracy" in stdout
    code, _, err = _run(capsys, "pool", "info", str(tmp_path / "missing.jsonl"))
    assert code == 2 and "no such file" in err


def test_every_option_has_help():
    parser = build_parser()
    pool_parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["pool"]
    sub = next(a for a in pool_parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == {"import", "validate", "info"}
    for name, p in sub.choices.items():
        for action in p._actions:
            assert action.help, f"pool {name}: {action.dest} has no help"


def test_validate_points_published_formats_to_import(shared_data, tmp_path, capsys):
    src = shared_data / "pools" / "prm-bon-fragments" / "bayesian-prm-search__n4.jsonl"
    assert main(["pool", "validate", str(src)]) == 2
    err = capsys.readouterr().err
    assert "line 1" in err and "'search-and-learn' format" in err and "optscale pool import" in err
    assert main(["pool", "validate", str(src), "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["valid"] is False and out["line"] == 1 and "search-and-learn" in out["hint"]
