"""Hardening (issue #9): bad inputs, unsafe defaults and output paths give one clear error (file, line,
field or parameter), never a traceback, a wrong result or a half-written file."""

from __future__ import annotations

import gzip
import inspect
import json
import os

import numpy as np
import pytest

from optscale.cli import main
from optscale.errors import InputError, OptScaleError, ParameterError
from optscale.pool import PoolError, load_pool

# ------------------------------------------------------------------------------------------------ helpers


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _problem(i: int, **kw) -> dict:
    d = {"id": f"p{i}", "question": f"What is {i} + 1?", "gold": str(i + 1),
         "samples": [{"answer": str(i + 1), "score": 0.9, "tokens": 10, "correct": True},
                     {"answer": "0", "score": 0.2, "tokens": 12, "correct": False},
                     {"answer": str(i + 1), "score": 0.8, "tokens": 11, "correct": True}]}
    d.update(kw)
    return d


def _pool_text(n: int = 6) -> str:
    return "".join(json.dumps(_problem(i)) + "\n" for i in range(n))


@pytest.fixture()
def pool_file(tmp_path):
    p = tmp_path / "pool.jsonl"
    p.write_text(_pool_text(), encoding="utf-8")
    return p


@pytest.fixture()
def gz_pool(tmp_path):
    p = tmp_path / "pool.jsonl.gz"
    p.write_bytes(gzip.compress(_pool_text().encode()))
    return p


EVAL_FAST = ("--methods", "bon,sc", "--budgets", "2,3", "--orderings", "0", "--no-tune", "--no-oracle")


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, (n, err)


# ------------------------------------------------------------------------------------------------ wrong results


def test_nstar_max_n_beyond_int64_float_range_is_refused(capsys):
    code, out, err = _run(capsys, "nstar", "--mu", 0.5, "--sigma", 0.1, "--target", 0.9,
                          "--max-n", 9223372036854775807, "--json")
    _one_line_error(code, err, "--max-n")
    assert out == ""


def test_nstar_large_valid_max_n_is_positive(capsys):
    code, out, _ = _run(capsys, "nstar", "--mu", 0.5, "--sigma", 0.1, "--target", 0.999999,
                        "--max-n", 2**53, "--json")
    assert code == 0 and 1 <= json.loads(out)["n_star"] <= 2**53


def test_theory_n_star_refuses_n_max_above_2_53():
    from optscale import theory

    with pytest.raises(ParameterError, match="n_max"):
        theory.n_star(np.array([0.5, 0.4]), np.array([0.1, 0.1]), 0.9, 0.05, 2**63 - 1)
    with pytest.raises(ParameterError, match="n_max"):
        theory.n_star(0.5, 0.1, 0.9, 0.05, 2**63 - 1)


# ------------------------------------------------------------------------------------------------ unsafe defaults


def test_prm_scorers_do_not_trust_remote_code_by_default():
    from optscale.online import prm

    for cls in (prm.QwenPRMScorer, prm.CausalPRMScorer, prm._TransformersPRM):
        params = inspect.signature(cls.__init__).parameters
        default = params["trust_remote_code"].default if "trust_remote_code" in params else (
            inspect.signature(prm._TransformersPRM.__init__).parameters["trust_remote_code"].default)
        assert default is False, cls
    hint = prm._remote_code_hint(ValueError("... set the option `trust_remote_code=True` ..."), False)
    assert "trust_remote_code=true" in hint
    assert prm._remote_code_hint(ValueError("other"), False) == ""


def test_paper_predictor_load_refuses_pickled_code(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from optscale.predictor import paper_arch

    marker = tmp_path / "code-ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    d = tmp_path / "model"
    d.mkdir()
    torch.save({"w": Evil()}, d / "trainable.pt")
    (d / "config.json").write_text(json.dumps({"backbone": "x", "head_hidden": 4, "trainable_layers": 0,
                                               "max_length": 8, "sd": [0.1, 0.1]}))

    def setup(self):  # no backbone download: a small module stands in for it
        self.model, self.device = torch.nn.Linear(1, 1), "cpu"

    monkeypatch.setattr(paper_arch.PaperPredictor, "_setup", setup)
    with pytest.raises(Exception) as ei:
        paper_arch.PaperPredictor.load(d)
    assert not marker.exists(), "torch.load ran code from the file"
    assert "weights_only" in str(ei.value) or "Unsupported" in str(ei.value) or "global" in str(ei.value)


@pytest.mark.parametrize("content", [b"hello, not a model\n", b"\x80\x04\x95\x00pickle"])
def test_non_npz_predictor_file_is_named_not_numpy_advice(capsys, tmp_path, content):
    bad = tmp_path / "model.npz"
    bad.write_bytes(content)
    code, _, err = _run(capsys, "predictor", "info", "--model", bad)
    _one_line_error(code, err, str(bad), "not a predictor file")
    assert "allow_pickle" not in err


def test_npy_with_pickled_objects_is_refused_without_advice(tmp_path):
    from optscale.predictor import Predictor

    bad = tmp_path / "obj.npz"
    np.savez(bad, meta=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError) as ei:
        Predictor.load(bad)
    assert "allow_pickle" not in str(ei.value) and str(bad) in str(ei.value)


# ------------------------------------------------------------------------------------------------ gzip


def test_gzip_pool_works_in_import_eval_validate_and_predict(capsys, tmp_path, gz_pool):
    out = tmp_path / "imported.jsonl"
    code, _, err = _run(capsys, "pool", "import", gz_pool, "-o", out, "--json")
    assert code == 0, err
    assert len(load_pool(out)) == 6
    code, out_eval, err = _run(capsys, "eval", gz_pool, *EVAL_FAST, "--json")
    assert code == 0, err
    assert json.loads(out_eval)["meta"]["problems"] == 6
    code, _, err = _run(capsys, "pool", "validate", gz_pool)
    assert code == 0, err
    # gzip is recognised by its bytes, not its name
    renamed = tmp_path / "pool-no-suffix.jsonl"
    renamed.write_bytes(gz_pool.read_bytes())
    assert len(load_pool(renamed)) == 6


def test_gzip_pool_in_predictor_predict(capsys, tmp_path, gz_pool):
    from optscale.predictor import Predictor

    rng = np.random.default_rng(0)
    texts = [f"Find the sum of {i} and {j} apples" for i in range(6) for j in range(5)]
    model = Predictor(None, blocks=("tfidf", "surface")).fit(texts, rng.uniform(0.3, 0.9, 30),
                                                            rng.uniform(0.05, 0.2, 30))
    model_path = model.save(tmp_path / "m.npz")
    out = tmp_path / "with-priors.jsonl"
    code, _, err = _run(capsys, "predictor", "predict", gz_pool, "--model", model_path, "--out", out)
    assert code == 0, err
    assert all(len(p.meta["prior"]) == 4 for p in load_pool(out).problems)


@pytest.mark.parametrize("kind", ["truncated", "fake"])
@pytest.mark.parametrize("cmd", [("pool", "validate"), ("pool", "info"), ("eval",), ("pool", "import")])
def test_truncated_or_fake_gzip_is_one_error(capsys, tmp_path, kind, cmd):
    data = gzip.compress(_pool_text(200).encode())
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(data[: len(data) // 2] if kind == "truncated" else b"\x1f\x8b" + b"not gzip at all" * 10)
    extra = ("-o", tmp_path / "o.jsonl") if cmd == ("pool", "import") else EVAL_FAST if cmd == ("eval",) else ()
    code, _, err = _run(capsys, *cmd, bad, *extra)
    _one_line_error(code, err, str(bad), "gzip")


# ------------------------------------------------------------------------------------------------ binary / non-UTF-8

BINARY = {"nul": b"\x00\x01\x02binary\x00" * 20, "latin1": b'{"id": "caf\xe9"}\n', "utf16": "[1]".encode("utf-16")}


@pytest.mark.parametrize("kind", sorted(BINARY))
@pytest.mark.parametrize("cmd", ["import", "eval", "predict", "validate"])
def test_binary_or_non_utf8_input_is_one_error(capsys, tmp_path, kind, cmd):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(BINARY[kind])
    argv = {"import": ("pool", "import", bad, "-o", tmp_path / "o.jsonl"), "eval": ("eval", bad, *EVAL_FAST),
            "predict": ("predictor", "predict", bad), "validate": ("pool", "validate", bad)}[cmd]
    code, _, err = _run(capsys, *argv)
    _one_line_error(code, err, str(bad))
    assert any(w in err for w in ("UTF-8", "UTF-16", "binary")), err


def test_prompt_file_binary_directory_missing(tmp_path):
    import argparse

    from optscale.cli.run import prompt_template

    bad = tmp_path / "prompt.txt"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    for path, needle in ((bad, "UTF"), (tmp_path, "directory"), (tmp_path / "nope.txt", "not found")):
        with pytest.raises(InputError, match=needle):
            prompt_template(argparse.Namespace(prompt_template=None, prompt_file=str(path)))
    good = tmp_path / "ok.txt"
    good.write_text("Q: {question}\n", encoding="utf-8")
    assert prompt_template(argparse.Namespace(prompt_template=None, prompt_file=str(good))) == "Q: {question}\n"


@pytest.mark.parametrize("action", ["evaluate", "train"])
def test_predictor_labels_binary_or_directory(capsys, tmp_path, action):
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"problem": f"q{i}"} for i in range(4)]), encoding="utf-8")
    binary = tmp_path / "labels.json"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    extra = ("--out", tmp_path / "m.npz", "--embedder", "none") if action == "train" else ()
    for labels in (binary, tmp_path):
        code, _, err = _run(capsys, "predictor", action, "--data", data, "--labels", labels, *extra)
        _one_line_error(code, err, str(labels))


# ------------------------------------------------------------------------------------------------ JSON values

BIG = "9" * 401


@pytest.mark.parametrize("field,raw", [
    ("samples[0].score", '"score": ' + BIG),
    ("samples[0].tokens", '"tokens": ' + BIG),
    ("samples[0].step_scores[1]", '"step_scores": [0.5, ' + BIG + "]"),
    ("samples[0].score", '"score": 1e400'),
])
def test_overlong_numbers_are_one_error_with_field(capsys, tmp_path, field, raw):
    bad = tmp_path / "big.jsonl"
    bad.write_text(_pool_text(2) + '{"id": "x", "question": "q", "gold": "1", "samples": [{"answer": "1", '
                   + raw + "}]}\n", encoding="utf-8")
    for argv in (("pool", "validate", bad), ("pool", "info", bad), ("eval", bad, *EVAL_FAST),
                 ("pool", "import", bad, "-o", tmp_path / "o.jsonl")):
        code, _, err = _run(capsys, *argv)
        _one_line_error(code, err, str(bad), "line 3", field)


def test_python_int_str_limit_is_one_error(tmp_path):
    bad = tmp_path / "huge.jsonl"
    bad.write_text('{"id": "x", "samples": [{"answer": "1", "tokens": ' + "1" * 5000 + "}]}\n")
    with pytest.raises(PoolError, match=r"line 1, field 'samples\[0\]\.tokens'.*5000 digits"):
        load_pool(bad)


@pytest.mark.parametrize("reader", ["pool", "problems", "records", "json", "import-optscale"])
def test_deep_nesting_is_one_error(tmp_path, reader):
    from optscale import jsonio
    from optscale.importers import import_optscale
    from optscale.problems import load_problems

    bad = tmp_path / "deep.json"
    bad.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    fn = {"pool": load_pool, "problems": load_problems, "records": jsonio.read_records,
          "json": jsonio.read_json, "import-optscale": import_optscale}[reader]
    with pytest.raises(InputError, match="nested more than"):
        fn(bad)


def test_moderately_deep_meta_is_refused_before_any_writer_can_fail(tmp_path):
    deep = {"id": "x", "question": "q", "samples": [{"answer": "1"}], "meta": {}}
    node = deep["meta"]
    for _ in range(500):
        node["k"] = {}
        node = node["k"]
    bad = tmp_path / "deep.jsonl"
    bad.write_text(json.dumps(deep) + "\n")
    with pytest.raises(PoolError, match=r"line 1, field 'meta(\.k)+'.*nested more than"):
        load_pool(bad)


def test_lone_surrogate_is_refused_by_validate_import_and_problems(capsys, tmp_path):
    from optscale.problems import load_problems

    bad = tmp_path / "sur.jsonl"
    bad.write_text(_pool_text(1) + json.dumps(_problem(7, question="bad \ud800 text")) + "\n", encoding="utf-8")
    code, _, err = _run(capsys, "pool", "validate", bad)
    assert code == 2 and "line 2" in err and "question" in err and "surrogate" in err
    code, _, err = _run(capsys, "pool", "import", bad, "-o", tmp_path / "o.jsonl")
    _one_line_error(code, err, "line 2", "surrogate")
    assert not (tmp_path / "o.jsonl").exists()
    with pytest.raises(InputError, match="line 2, field 'question'.*surrogate"):
        load_problems(bad)
    # a valid surrogate *pair* is ordinary text
    ok = tmp_path / "pair.jsonl"
    ok.write_text(json.dumps(_problem(1, question="emoji \U0001F600")) + "\n", encoding="ascii")
    assert load_pool(ok).problems[0].question == "emoji \U0001F600"


def test_lone_surrogate_in_a_key_is_refused(tmp_path):
    bad = tmp_path / "k.jsonl"
    bad.write_text('{"id": "a", "samples": [{"answer": "1"}], "meta": {"\\udc00": 1}}\n')
    with pytest.raises(PoolError, match="surrogate"):
        load_pool(bad)


# ------------------------------------------------------------------------------------------------ output paths


def test_pool_import_output_missing_parent_or_directory(capsys, tmp_path, pool_file):
    code, _, err = _run(capsys, "pool", "import", pool_file, "-o", tmp_path / "no" / "such" / "out.jsonl")
    _one_line_error(code, err, "--output", "does not exist")
    target = tmp_path / "adir"
    target.mkdir()
    code, _, err = _run(capsys, "pool", "import", pool_file, "-o", target)
    _one_line_error(code, err, "--output", "directory")
    assert sorted(os.listdir(tmp_path)) == ["adir", "pool.jsonl"]  # no adir.tmp left behind
    assert os.listdir(target) == []


def test_save_pool_failure_leaves_no_temporary_file(tmp_path, pool_file):
    from optscale.pool import save_pool

    pool = load_pool(pool_file)
    target = tmp_path / "dir"
    target.mkdir()
    with pytest.raises(ParameterError, match="directory"):
        save_pool(pool, target)
    pool.problems[0].samples[0].score = float("nan")
    with pytest.raises(PoolError, match=r"samples\[0\]\.score"):
        save_pool(pool, tmp_path / "out.jsonl")
    assert sorted(os.listdir(tmp_path)) == ["dir", "pool.jsonl"]


def test_eval_out_existing_file_fails_before_evaluating(capsys, tmp_path, pool_file, monkeypatch):
    import optscale.evaluate as ev

    def boom(*a, **k):
        raise AssertionError("evaluated although --out was unusable")

    monkeypatch.setattr(ev, "evaluate", boom)
    existing = tmp_path / "results.txt"
    existing.write_text("keep me")
    code, _, err = _run(capsys, "eval", pool_file, *EVAL_FAST, "--out", existing)
    _one_line_error(code, err, "--out", "not a directory")
    assert existing.read_text() == "keep me"
    code, _, err = _run(capsys, "eval", pool_file, *EVAL_FAST, "--out", existing / "sub")
    _one_line_error(code, err, "--out")


def test_eval_out_new_directory_gets_reports(capsys, tmp_path, pool_file):
    out = tmp_path / "a" / "b"
    code, _, err = _run(capsys, "eval", pool_file, *EVAL_FAST, "--out", out)
    assert code == 0, err
    assert {"results.csv", "results.json", "results.md"} <= set(os.listdir(out))
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def test_predictor_outputs_checked_before_work(capsys, tmp_path, pool_file):
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"problem": f"q{i}"} for i in range(4)]), encoding="utf-8")
    labels = tmp_path / "labels.json"
    labels.write_text("[[0.5, 0.1]]")  # wrong length: would fail only after the --out check
    code, _, err = _run(capsys, "predictor", "train", "--data", data, "--labels", labels,
                        "--out", tmp_path / "missing" / "m.npz", "--embedder", "none")
    _one_line_error(code, err, "--out", "does not exist")
    code, _, err = _run(capsys, "predictor", "predict", pool_file, "--out", tmp_path)
    _one_line_error(code, err, "--out", "directory")


def test_atomic_write_keeps_old_content_on_failure(tmp_path):
    from optscale import jsonio

    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with jsonio.atomic_write(target, "w") as fh:
            fh.write("new, half written")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]
    jsonio.write_text(target, "new")
    assert target.read_text() == "new"
    with jsonio.atomic_write(tmp_path / "z.jsonl.gz", "wb") as fh:
        fh.write(b'{"a": 1}\n')
    assert list(jsonio.iter_jsonl(tmp_path / "z.jsonl.gz")) == [(1, {"a": 1})]


# ------------------------------------------------------------------------------------------------ predictor .npz


@pytest.fixture()
def saved_predictor(tmp_path):
    from optscale.predictor import Predictor

    rng = np.random.default_rng(0)
    texts = [f"How many {w} are in {i} boxes?" for i in range(8) for w in ("apples", "pears", "plums")]
    model = Predictor(None, blocks=("tfidf", "surface")).fit(texts, rng.uniform(0.3, 0.9, 24),
                                                            rng.uniform(0.05, 0.2, 24))
    return model.save(tmp_path / "m.npz")


def _rewrite(path, drop=None, **replace):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != drop}
    arrays.update(replace)
    np.savez_compressed(path, **arrays)


@pytest.mark.parametrize("defect,needle", [
    ("missing", "'stack'"), ("missing-block", "ridge_tfidf_coef"), ("shape", "'stack'"),
    ("nan", "'const'"), ("truncated", "truncated or corrupt"),
])
def test_malformed_predictor_npz_names_file_and_array(capsys, saved_predictor, defect, needle):
    from optscale.predictor import Predictor

    if defect == "missing":
        _rewrite(saved_predictor, drop="stack")
    elif defect == "missing-block":
        _rewrite(saved_predictor, drop="ridge_tfidf_coef")
    elif defect == "shape":
        _rewrite(saved_predictor, stack=np.zeros((2, 5)))
    elif defect == "nan":
        _rewrite(saved_predictor, const=np.array([np.nan, 0.1]))
    else:
        data = saved_predictor.read_bytes()
        saved_predictor.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as ei:
        Predictor.load(saved_predictor)
    assert str(saved_predictor) in str(ei.value) and needle in str(ei.value)
    code, _, err = _run(capsys, "predictor", "info", "--model", saved_predictor)
    _one_line_error(code, err, str(saved_predictor))


# ------------------------------------------------------------------------------------------------ silent acceptance


@pytest.mark.parametrize("value", ["-1", "0", "nan"])
def test_pool_import_timeout_must_be_positive(capsys, tmp_path, pool_file, value):
    code, _, err = _run(capsys, "pool", "import", pool_file, "-o", tmp_path / "o.jsonl", "--timeout", value)
    _one_line_error(code, err, "--timeout")
    assert not (tmp_path / "o.jsonl").exists()


def test_eval_duplicate_methods_refused(capsys, pool_file):
    code, _, err = _run(capsys, "eval", pool_file, "--methods", "bon,bon", "--budgets", "2")
    _one_line_error(code, err, "--methods", "bon")


@pytest.mark.parametrize("prior", [[0.5], "high", [0.5, -0.1], [0.5, float("inf")], {"mu0": 0.5}, None])
def test_eval_malformed_meta_prior_refused(capsys, tmp_path, prior):
    bad = tmp_path / "pri.jsonl"
    lines = [_problem(i, meta={"prior": [0.6, 0.2]}) for i in range(4)]
    if prior is None:
        del lines[2]["meta"]
    else:
        lines[2]["meta"] = {"prior": prior}
    bad.write_text("".join(json.dumps(d, allow_nan=True).replace("Infinity", "1e999") + "\n" for d in lines))
    code, _, err = _run(capsys, "eval", bad, *EVAL_FAST)
    _one_line_error(code, err, "prior")
    assert "p2" in err or "line 3" in err  # the problem (or its line, when the reader refuses the number)


def test_eval_good_meta_prior_is_used(capsys, tmp_path):
    good = tmp_path / "pri.jsonl"
    good.write_text("".join(json.dumps(_problem(i, meta={"prior": [0.6, 0.2]})) + "\n" for i in range(4)))
    code, out, err = _run(capsys, "eval", good, "--methods", "optscalet", "--budgets", "3", "--orderings", "0",
                          "--no-tune", "--no-oracle", "--json")
    assert code == 0, err


# ------------------------------------------------------------------------------------------------ minor


@pytest.mark.parametrize("drop,field", [("id", "id"), ("samples", "samples")])
def test_pool_missing_id_or_samples_names_the_field(capsys, tmp_path, drop, field):
    d = _problem(0)
    del d[drop]
    bad = tmp_path / "p.jsonl"
    bad.write_text(json.dumps(d) + "\n")
    code, _, err = _run(capsys, "eval", bad, *EVAL_FAST)
    _one_line_error(code, err, f"field '{field}'", "missing")
    assert "cannot tell the format" not in err


@pytest.mark.parametrize("value", ["-1e6", "-1E+2", "-0.5", "-3"])
def test_negative_numbers_are_values(capsys, value):
    code, out, err = _run(capsys, "nstar", "--mu", value, "--sigma", 0.1, "--target", 0.9, "--json")
    assert code == 0, err
    assert json.loads(out)["mu"] == float(value)


def test_zero_completion_error_names_the_source_not_the_output(capsys, tmp_path):
    src = tmp_path / "paper.json"
    src.write_text(json.dumps([{"id": 0, "score": {"problem": ["q"], "completions": [[]], "scores": [[]]}}]))
    out = tmp_path / "out.jsonl"
    code, _, err = _run(capsys, "pool", "import", src, "-o", out)
    _one_line_error(code, err, str(src), "completions")
    assert str(out) not in err and not out.exists()


# ------------------------------------------------------------------------------------------------ the reader


def test_parse_line_kinds_for_crash_recovery():
    from optscale import jsonio

    assert jsonio.parse_line(b'{"a": 1}\n') == {"a": 1}
    for raw, kind in ((b'{"a": 1', "syntax"), (b'{"a": "\xe2\x82', "encoding"), (b'{"a": NaN}', "value"),
                      (b'{"a": "\\ud800"}', "value"), (b"[" * 5000 + b"]" * 5000, "value")):
        with pytest.raises(jsonio.JsonError) as ei:
            jsonio.parse_line(raw, "ck.jsonl", 7)
        assert ei.value.kind == kind and "ck.jsonl, line 7" in str(ei.value)


def test_every_error_is_an_optscale_error(tmp_path):
    from optscale import jsonio

    cases = {"dir": None, "empty.json": b"", "bad.json": b"{,}", "nul.json": b"\x00"}
    for name, data in cases.items():
        p = tmp_path / name
        if data is None:
            p.mkdir()
        else:
            p.write_bytes(data)
        for fn in (jsonio.read_json, jsonio.read_records, load_pool):
            with pytest.raises(OptScaleError):
                fn(p)
