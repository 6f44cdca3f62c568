"""Tests of ``optscale eval`` (optscale.cli.eval)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from optscale.pool import Pool, Problem, Sample, save_pool

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_cli(argv: list[str]) -> int:
    """``optscale`` with ``argv`` through the real dispatcher (its error handling included)."""
    from optscale.cli import main

    return main(argv)


def write_pool(path, P=24, M=16, seed=0, scores=True, priors=False):
    rng = np.random.default_rng(seed)
    problems = []
    for i in range(P):
        mu, sigma = rng.uniform(0.3, 0.9), rng.uniform(0.05, 0.25)
        samples = []
        for _ in range(M):
            s = float(np.clip(rng.normal(mu, sigma), 0, 1))
            ok = bool(rng.random() < s)
            ans = "42" if ok else str(int(rng.integers(0, 5)))
            samples.append(Sample(answer=ans, score=s if scores else None, tokens=int(rng.integers(20, 300)),
                                  correct=ok))
        meta = {"prior": [mu, sigma]} if priors else {}
        problems.append(Problem(id=f"q{i}", question=f"question {i}", gold="42", samples=samples, meta=meta))
    save_pool(Pool(problems=problems), path)
    return path


def test_cli_eval_writes_all_four_files(tmp_path, capsys):
    pool = write_pool(tmp_path / "pool.jsonl")
    out = tmp_path / "out"
    code = run_cli(["eval", str(pool), "--methods", "bon,sc,esc,optscale0", "--budgets", "4,8,16",
                    "--orderings", "2", "--out", str(out)])
    assert code == 0
    stdout = capsys.readouterr().out
    assert "| BoN" in stdout and "OptScale0 (tuned)" in stdout and "held-out" in stdout
    for name in ("results.csv", "results.json", "results.md", "accuracy_vs_tokens.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "accuracy_vs_tokens.png").read_bytes()[:8] == PNG_SIGNATURE
    data = json.loads((out / "results.json").read_text())
    methods = {r["method"] for r in data["rows"]}
    assert methods == {"bon", "sc", "esc", "optscale0", "oracle"}
    assert all(r["split"] == "test" for r in data["rows"])
    assert set(data["meta"]["tuned"]["optscale0"]) == {"4", "8", "16"}
    csv_lines = (out / "results.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 1 + len(data["rows"])


def test_cli_eval_json_no_tune_and_meta_priors(tmp_path, capsys):
    pool = write_pool(tmp_path / "pool.jsonl", priors=True)
    code = run_cli(["eval", str(pool), "--methods", "bon,optscalet:k=2", "--budgets", "8",
                    "--orderings", "1", "--no-tune", "--json", "--no-oracle"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in data["rows"]] == ["bon", "optscalet"]
    assert all(r["split"] == "all" for r in data["rows"])


def test_cli_eval_priors_file(tmp_path, capsys):
    pool = write_pool(tmp_path / "pool.jsonl", P=6)
    pri = tmp_path / "pri.json"
    pri.write_text(json.dumps({f"q{i}": [0.6, 0.2] for i in range(6)}))
    code = run_cli(["eval", str(pool), "--methods", "optscalet", "--budgets", "8", "--no-tune",
                    "--orderings", "0", "--priors", str(pri), "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["rows"][0]["method"] == "optscalet"



def test_cli_eval_calib_ids_file_is_the_calibration_split(tmp_path, capsys):
    """--calib-ids: the named problems are the calibration split, every other one is reported; a bad file
    fails before anything is written, naming the file and the element."""
    pool = write_pool(tmp_path / "pool.jsonl", P=12, M=8)
    ids = tmp_path / "calib.json"
    ids.write_text(json.dumps(["q3", "q0", "q7", "q9"]))
    out = tmp_path / "out"
    assert run_cli(["eval", str(pool), "--methods", "bon,optscale0", "--budgets", "8", "--orderings", "1",
                    "--calib-ids", str(ids), "--json", "--no-oracle", "--no-coverage", "--out", str(out)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["meta"]["calib_problems"] == [0, 3, 7, 9]
    assert data["meta"]["test_problems"] == [1, 2, 4, 5, 6, 8, 10, 11]
    assert all(r["split"] == "test" and r["n_problems"] == 8 for r in data["rows"])
    for content, needle in ((["q1", "q99"], "[1]"), (["q1", "q1"], "given twice"), ([3], "[0]"),
                            ({"q1": 1}, "list of problem ids"), ([f"q{i}" for i in range(12)], "none is left")):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(content))
        out2 = tmp_path / "out2"
        assert run_cli(["eval", str(pool), "--methods", "bon", "--budgets", "8", "--calib-ids", str(bad),
                        "--out", str(out2)]) == 2
        err = capsys.readouterr().err
        assert "bad.json" in err and needle in err and "Traceback" not in err
        assert not out2.exists()
    bad.write_bytes(b"\x00\xff\xfe garbage")
    assert run_cli(["eval", str(pool), "--methods", "bon", "--budgets", "8", "--calib-ids", str(bad)]) == 2
    assert "bad.json" in capsys.readouterr().err

def test_cli_eval_clear_errors(tmp_path, capsys):
    pool = write_pool(tmp_path / "pool.jsonl", P=6, scores=False)
    assert run_cli(["eval", str(pool), "--methods", "sc,bon", "--budgets", "8"]) == 2
    err = capsys.readouterr().err
    assert "'bon' needs verifier scores" in err and "Traceback" not in err
    pool2 = write_pool(tmp_path / "pool2.jsonl", P=6)
    assert run_cli(["eval", str(pool2), "--methods", "optscalet", "--budgets", "8"]) == 2
    assert "'optscalet' needs priors" in capsys.readouterr().err
    assert run_cli(["eval", str(pool2), "--methods", "bon", "--budgets", "8,x"]) == 2
    assert "budgets" in capsys.readouterr().err


def test_cli_eval_real_selfconsistency_pool(shared_data, tmp_path, capsys):
    path = shared_data / "pools" / "selfconsistency-codex" / "addsub_output_sc_002.normalized.jsonl"
    code = run_cli(["eval", str(path), "--methods", "sc,esc,asc", "--budgets", "8,40", "--orderings", "2",
                    "--no-tune", "--json"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    sc40 = next(r for r in rows if r["method"] == "sc" and r["budget"] == 40)
    assert sc40["accuracy"] == pytest.approx(0.9165, abs=0.01)
    orc = next(r for r in rows if r["method"] == "oracle" and r["budget"] == 40)
    assert orc["params"] == {"reference": "sc"} and orc["tokens"] < sc40["tokens"]


def test_cli_eval_predictor_priors_equal_a_priors_file(tmp_path, capsys):
    """--predictor default feeds OptScale^t the shipped predictor's priors for each problem's question:
    the report equals the one obtained from a --priors file holding exactly those priors; OptScale's
    warm-up size k is among the tuned hyper-parameters."""
    from optscale.predictor import load_default

    pool = write_pool(tmp_path / "pool.jsonl", P=12)
    from optscale.pool import load_pool

    questions = [p.question for p in load_pool(pool).problems]
    priors = load_default().priors_for(questions)
    pri = tmp_path / "pri.json"
    pri.write_text(json.dumps({f"q{i}": [float(v) for v in row] for i, row in enumerate(priors)}))
    common = ["eval", str(pool), "--methods", "optscalet,optscale0", "--budgets", "8", "--orderings", "1",
              "--json", "--no-oracle"]
    assert run_cli(common + ["--predictor", "default"]) == 0
    by_predictor = json.loads(capsys.readouterr().out)
    assert run_cli(common + ["--priors", str(pri)]) == 0
    by_file = json.loads(capsys.readouterr().out)
    assert by_predictor["rows"] == by_file["rows"]
    assert "k" in by_predictor["meta"]["tuned"]["optscale0"]["8"]["params"]
    assert run_cli(common + ["--predictor", "default", "--priors", str(pri)]) == 2
    assert "--predictor" in capsys.readouterr().err


def _pool_without_tokens(path, partial=False, P=8, M=8):
    problems = []
    for i in range(P):
        samples = [Sample(answer=str(j % 2), score=float(j % 2), tokens=(7 if partial and j == 0 else None),
                          correct=None) for j in range(M)]
        problems.append(Problem(id=f"q{i}", question=f"question {i}", gold="1", samples=samples, meta={}))
    save_pool(Pool(problems=problems), path)
    return path


def test_cli_eval_pool_without_tokens_costs_samples(tmp_path, capsys):
    pool = _pool_without_tokens(tmp_path / "nt.jsonl")
    assert run_cli(["eval", str(pool), "--methods", "bon,sc", "--budgets", "4,8", "--orderings", "1",
                    "--no-oracle", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["meta"]["cost"] == "samples"
    for r in data["rows"]:
        assert r["tokens"] == r["samples"] == r["budget"]   # each drawn sample costs 1
    assert run_cli(["eval", str(pool), "--methods", "bon", "--budgets", "4", "--no-oracle"]) == 0
    assert "no token counts" in capsys.readouterr().out
    partial = _pool_without_tokens(tmp_path / "pt.jsonl", partial=True)
    assert run_cli(["eval", str(partial), "--methods", "bon", "--budgets", "4"]) == 2
    assert "some samples have token counts" in capsys.readouterr().err


def test_cli_eval_mr_thinking_keeps_the_pool_order(tmp_path, capsys):
    """MR-Thinking's samples are sequential rounds: random orderings must not scramble them (the last
    round of this pool is always correct, so MR-Thinking@8 is always right)."""
    pool = _pool_without_tokens(tmp_path / "rounds.jsonl")
    assert run_cli(["eval", str(pool), "--methods", "mr-thinking", "--budgets", "8", "--orderings", "5",
                    "--no-oracle", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert row["accuracy"] == 1.0


def test_cli_eval_rejects_bad_numbers(tmp_path, capsys):
    pool = write_pool(tmp_path / "pool.jsonl", P=6)
    for flag, val, name in (("--seed", "-1", "seed"), ("--tolerance", "-1", "tolerance"),
                            ("--token-penalty", "nan", "token_penalty"), ("--margin-z", "-1", "margin_z"),
                            ("--tune-folds", "0", "tune_folds")):
        assert run_cli(["eval", str(pool), "--methods", "bon", "--budgets", "8", flag, val]) == 2
        err = capsys.readouterr().err
        assert f"parameter '{name}'" in err and "Traceback" not in err


def test_cli_eval_issue8_rules_coverage_and_gain_model(tmp_path, capsys):
    pool = write_pool(tmp_path / "pool.jsonl", P=40, M=16, seed=3)
    out = tmp_path / "out"
    code = run_cli(["eval", str(pool), "--methods", "bon,optscale0,optscale-post-seq", "--budgets", "8,16",
                    "--orderings", "1", "--tokens-per-point", "50", "--total-budget", "40000", "--out", str(out),
                    "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    methods = {r["method"] for r in data["rows"]}
    assert {"costaware", "budget-alloc", "optscale-post-seq"} <= methods
    cov = data["meta"]["coverage"]
    assert {c["method"] for c in cov} == {"optscale0", "optscale-post-seq"}
    assert all(0 <= c["stopped"] <= 1 and c["promised"] == pytest.approx(1 - c["alpha"]) for c in cov)
    kinds = {c["method"]: c["guarantee"] for c in cov}
    assert kinds == {"optscale0": "plug-in", "optscale-post-seq": "posterior"}
    g = data["meta"]["guarantees"]
    assert set(g) == {c["label"] for c in cov}
    assert all(v["verdict"] in ("kept", "missed", "unchecked") and v["checked"] >= v["missed"] for v in g.values())
    assert "margin_z 1.0" in data["meta"]["selection"]
    assert "tuning" not in data["meta"]["gain_model"]  # costaware's exchange rate was given: nothing tuned
    assert data["meta"]["score_models"]["chosen"] in ("tn", "beta", "exc")
    assert (out / "reliability.png").read_bytes()[:8] == PNG_SIGNATURE
    assert "achieved" in (out / "coverage.md").read_text()
    from optscale.policies import GainModel, make_policy

    gm = GainModel.load(out / "gain_model.json")  # what `run` / the server load
    assert gm.tag == data["meta"]["gain_model"]["tag"]
    assert make_policy(f"costaware:tokens_per_point=50,model={out / 'gain_model.json'}").model.tag == gm.tag
    # the allocation spends at most the reported split's share of the total budget (per ordering)
    alloc = [r for r in data["rows"] if r["method"] == "budget-alloc"]
    assert alloc and all(r["tokens"] <= 40000 / 40 + 1e-6 for r in alloc)


def test_cli_eval_rejects_bad_exchange_rate(tmp_path, capsys):
    pool = write_pool(tmp_path / "pool.jsonl", P=10, M=8)
    assert run_cli(["eval", str(pool), "--tokens-per-point", "-3", "--out", str(tmp_path / "o")]) != 0
    assert "--tokens-per-point" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_eval_says_per_claiming_rule_whether_it_kept_its_promise(tmp_path, capsys):
    pool = write_pool(tmp_path / "pool.jsonl", P=30, M=16, seed=4)
    assert run_cli(["eval", str(pool), "--methods", "bon,optscale0,optscale-post-seq,asc", "--budgets", "8,16",
                    "--orderings", "1", "--no-oracle", "--margin-z", "0.5"]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if " guarantee (" in ln]
    assert len(lines) == 2, out  # one line per rule that claims the guarantee (not BoN, not ASC)
    assert lines[0].startswith("- OptScale0 (tuned): plug-in guarantee (the paper's claim")
    assert lines[1].startswith("- OptScalePost seq (tuned): posterior guarantee (optscale's guarantee")
    assert all(("KEPT at all" in ln) or ("MISSED at" in ln) or ("unchecked" in ln) for ln in lines)
    assert "selection: match (tolerance 0.005, margin_z 0.5)" in out
