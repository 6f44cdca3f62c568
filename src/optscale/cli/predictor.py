"""``optscale predictor {train,evaluate,predict,info}``: the OptScale^t prior predictor.

* ``train --data PROBLEMS --labels LABELS --out FILE``: fit a predictor (reproduces the shipped one with the
  paper's MATH training labels, see docs/PREDICTOR.md).
* ``evaluate --data PROBLEMS --labels LABELS [--json]``: MSE / Spearman of the predicted score mean and std
  vs a constant predictor.
* ``predict INPUT --out FILE``: priors for a problem file (writes a priors JSON {id: [mu0, sigma0, sd_mu,
  sd_sigma]}) or a pool (writes the pool with meta "prior" per problem).
"""

from __future__ import annotations

import argparse
import json
import sys

from optscale.cli._common import add_json_flag, emit_json


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "predictor",
        help="OptScale^t prior predictor: train, evaluate, predict priors (mu0, sigma0) from problem text",
        description=(
            "The prior predictor of OptScale^t maps a problem's text to a prior (mu0, sigma0) on its "
            "verifier-score distribution (normal truncated to [0, 1]) plus an uncertainty (sd_mu, sd_sigma) "
            "used as the MAP prior's spread. The shipped model stacks a ridge on all-MiniLM-L6-v2 hidden states "
            "(6 layers), nearest-neighbour and RBF kernel-ridge heads on its sentence embedding, a TF-IDF ridge "
            "and a TF-IDF nearest-neighbour head (CPU, no hub access); see docs/PREDICTOR.md."
        ),
    )
    sub = p.add_subparsers(dest="predictor_command", metavar="ACTION")
    sub.required = True

    t = sub.add_parser("train", help="fit a predictor on labelled problems",
                       description="Fit a predictor on problems labelled with the mean and std of their "
                                   "verifier scores (e.g. the paper's predictor/train_data.json + "
                                   "train_mu_sigma.json).")
    _data_args(t)
    t.add_argument("--embedder", default="minilm-layers",
                   help="language-model embedder: minilm-layers (default: all-MiniLM-L6-v2, its 6 layers "
                        "mean-pooled and concatenated; torch), minilm (sentence embedding only), smollm2 "
                        "(llama.cpp), or none")
    t.add_argument("--blocks", default="emb,knn,krr,tfidf,tknn,surface",
                   help="feature blocks, comma-separated subset of emb,knn,krr,tfidf,tknn,surface (default all)")
    t.add_argument("--out", required=True, help="output .npz (the shipped one is optscale/predictor/weights/default.npz)")
    t.add_argument("--no-cache", action="store_true", help="do not cache embeddings under ~/.cache/optscale")
    add_json_flag(t)
    t.set_defaults(func=run_train)

    e = sub.add_parser("evaluate", help="metrics of a predictor on labelled problems",
                       description="MSE and Spearman correlation of the predicted score mean (mu) and std "
                                   "(sigma) against labels, beside the constant predictor (training mean).")
    _data_args(e)
    _model_arg(e)
    e.add_argument("--no-cache", action="store_true", help="do not cache embeddings")
    add_json_flag(e)
    e.set_defaults(func=run_evaluate)

    r = sub.add_parser("predict", help="priors for a problem file or a pool",
                       description="Predict (mu0, sigma0, sd_mu, sd_sigma) per problem. INPUT is a pool "
                                   "(JSON Lines, docs/POOL_FORMAT.md: the output is the pool with meta "
                                   "\"prior\" = [mu0, sigma0, sd_mu, sd_sigma] per problem) or a problem file "
                                   "(JSON / JSONL: the output is a priors JSON {id: [mu0, sigma0, sd_mu, "
                                   "sd_sigma]}, usable with `optscale eval --priors`).")
    r.add_argument("input", metavar="INPUT", help="pool (.jsonl) or problem file (.json/.jsonl)")
    r.add_argument("--out", default=None, help="output file (default: priors JSON on stdout)")
    r.add_argument("--as", dest="kind", choices=("auto", "pool", "problems"), default="auto",
                   help="how to read INPUT (default auto: a pool if it parses as one)")
    r.add_argument("--question-field", default=None, help="question field of a problem file (auto by default)")
    _model_arg(r)
    add_json_flag(r)
    r.set_defaults(func=run_predict)

    i = sub.add_parser("info", help="describe a predictor file (training metrics, blocks)")
    _model_arg(i)
    add_json_flag(i)
    i.set_defaults(func=run_info)
    return p


def _data_args(p) -> None:
    p.add_argument("--data", required=True, help="problems: JSON list / JSONL with a question field (e.g. 'problem')")
    p.add_argument("--labels", required=True,
                   help="JSON list of [mean, std] of each problem's verifier scores, aligned with --data")
    p.add_argument("--question-field", default=None, help="question field (auto by default)")


def _model_arg(p) -> None:
    p.add_argument("--model", default=None, help="predictor .npz (default: the shipped predictor)")


QUESTION_FIELDS = ("problem", "question", "prompt", "input", "text")
ID_FIELDS = ("id", "unique_id", "uid", "idx")


def _load_texts(path, field=None) -> tuple[list[str], list[str]]:
    """(texts, ids) from a JSON list / JSON Lines file of objects (question field picked automatically
    or ``field``) or of strings. Ids need not be unique here (the paper's MATH file repeats one)."""
    from optscale.errors import InputError
    from optscale.problems import read_records

    items, _ = read_records(path)
    texts, ids = [], []
    for pos, (line, rec) in enumerate(items):
        where = f"item {pos}: " if line is None else ""
        if isinstance(rec, str):
            texts.append(rec)
            ids.append(str(pos))
            continue
        if not isinstance(rec, dict):
            raise InputError(str(path), line, None, f"{where}expected an object or a string, got {type(rec).__name__}")
        key = field or next((f for f in QUESTION_FIELDS if f in rec), None)
        if key is None or not isinstance(rec.get(key), str) or not rec[key].strip():
            raise InputError(str(path), line, field or "/".join(QUESTION_FIELDS),
                             f"{where}no non-empty question field (have: {', '.join(sorted(rec))})")
        texts.append(rec[key])
        idf = next((f for f in ID_FIELDS if f in rec), None)
        ids.append(str(rec[idf]) if idf is not None else str(pos))
    if not texts:
        raise InputError(str(path), None, None, "no problems")
    return texts, ids


def _load_labels(path, n: int):
    import numpy as np

    from optscale import jsonio
    from optscale.errors import InputError

    data = jsonio.read_json(path)  # missing, directory, binary, non-UTF-8, syntax: one error naming the file
    try:
        arr = np.asarray(data, dtype=float)
    except (TypeError, ValueError):
        raise InputError(str(path), None, None, "must be a JSON list of [mean, std] pairs") from None
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise InputError(str(path), None, None, f"must be a list of [mean, std] pairs, got shape {arr.shape}")
    if len(arr) != n:
        raise InputError(str(path), None, None, f"has {len(arr)} labels for {n} problems")
    if not np.all(np.isfinite(arr)) or np.any(arr[:, 0] < 0) or np.any(arr[:, 0] > 1) or np.any(arr[:, 1] < 0):
        bad = int(np.flatnonzero(~np.isfinite(arr).all(1) | (arr[:, 0] < 0) | (arr[:, 0] > 1) | (arr[:, 1] < 0))[0])
        raise InputError(str(path), None, f"[{bad}]", f"label must be [mean in [0,1], std >= 0], got {arr[bad].tolist()}")
    return arr


def _load_model(path):
    from optscale.predictor import Predictor, load_default

    return load_default() if path is None else Predictor.load(path)


def _print_metrics(m: dict, title: str) -> None:
    print(title)
    print(f"{'':8} {'MSE':>10} {'MSE const':>10} {'reduction':>10} {'Spearman':>9}")
    for k in ("mu", "sigma"):
        print(f"{k:8} {m[f'mse_{k}']:10.5f} {m[f'mse_{k}_const']:10.5f} {m[f'mse_{k}_reduction']:10.1%} "
              f"{m[f'spearman_{k}']:9.3f}")
    print("(mu = mean of the verifier scores, sigma = their std; const = training-label mean)")


def run_train(args) -> int:
    import time

    from optscale.jsonio import check_output
    from optscale.predictor import Predictor

    check_output(args.out, "--out")  # before training, not after
    texts, _ = _load_texts(args.data, args.question_field)
    y = _load_labels(args.labels, len(texts))
    emb = None if args.embedder.lower() in ("none", "") else args.embedder
    blocks = [b.strip() for b in args.blocks.split(",") if b.strip()]
    t0 = time.time()
    pred = Predictor(emb, blocks, cache=not args.no_cache)
    pred.fit(texts, y[:, 0], y[:, 1], progress=sys.stderr.isatty())
    out = pred.save(args.out)
    info = dict(pred.info, out=str(out), seconds=round(time.time() - t0, 1))
    if args.json:
        emit_json(info)
    else:
        _print_metrics(info["cv"], f"trained on {len(texts)} problems -> {out}; leave-one-out CV on training:")
    return 0


def run_evaluate(args) -> int:
    pred = _load_model(args.model)
    if args.no_cache:
        pred.cache = False
    texts, _ = _load_texts(args.data, args.question_field)
    y = _load_labels(args.labels, len(texts))
    m = pred.evaluate(texts, y[:, 0], y[:, 1], progress=sys.stderr.isatty())
    m["model"] = args.model or "shipped default"
    m["blocks"] = list(pred.blocks)
    m["embedder"] = pred.embedder_config
    if args.json:
        emit_json(m)
    else:
        _print_metrics(m, f"{len(texts)} problems, predictor {m['model']}:")
    return 0


def _read_pool(path):
    from optscale.pool import load_pool

    return load_pool(path)


def _looks_like_pool(path) -> bool:
    """Whether the first record of ``path`` is a pool line (a problem with ``samples``)."""
    from optscale import jsonio
    from optscale.importers import sniff_format

    if sniff_format(path) != "pool":
        return False
    records = jsonio.iter_jsonl(path)
    try:
        return "samples" in next(records)[1]
    finally:
        records.close()


def run_predict(args) -> int:
    from optscale import jsonio
    from optscale.errors import InputError

    if args.out:
        jsonio.check_output(args.out, "--out")
    jsonio.read_head(args.input, 1)  # a missing file, a directory or corrupt gzip: one clear error
    pred = _load_model(args.model)
    pool = None
    kind = args.kind
    if kind == "auto":
        try:  # a file that looks like a pool is read (and validated) as one: its errors are reported
            kind = "pool" if _looks_like_pool(args.input) else "problems"
        except InputError as exc:
            if getattr(exc, "kind", None) in ("file", "gzip", "encoding"):
                raise
            kind = "problems"
    if kind == "pool":
        pool = _read_pool(args.input)
    if pool is not None:
        texts = [p.question for p in pool.problems]
        ids = [p.id for p in pool.problems]
    else:
        texts, ids = _load_texts(args.input, args.question_field)
    priors = pred.priors_for(texts, progress=sys.stderr.isatty())
    rows = [[float(x) for x in r] for r in priors]
    if pool is not None and args.out:
        from optscale.pool import save_pool

        for prob, r in zip(pool.problems, rows, strict=True):
            prob.meta = dict(prob.meta or {}, prior=r)
        save_pool(pool, args.out)
        if args.json:
            emit_json({"problems": len(rows), "output": str(args.out), "kind": "pool"})
        else:
            print(f"wrote {len(rows)} priors into pool meta 'prior' -> {args.out}", file=sys.stderr)
        return 0
    # {id: prior}, or a list aligned with the problems when ids repeat
    data = dict(zip(ids, rows, strict=True)) if len(set(ids)) == len(ids) else rows
    if args.out:
        jsonio.write_text(args.out, json.dumps(data, indent=1) + "\n", param="--out")
        if args.json:
            emit_json({"problems": len(rows), "output": str(args.out), "kind": "priors"})
        else:
            print(f"wrote {len(rows)} priors [mu0, sigma0, sd_mu, sd_sigma] -> {args.out}", file=sys.stderr)
    else:
        emit_json(data)
    return 0


def run_info(args) -> int:
    pred = _load_model(args.model)
    info = dict(pred.info, blocks=list(pred.blocks), embedder=pred.embedder_config)
    if args.json:
        emit_json(info)
    else:
        print(f"blocks: {', '.join(pred.blocks)}; embedder: {pred.embedder_config}")
        if "cv" in info:
            _print_metrics(info["cv"], f"cross-validation on {info.get('n_train')} training problems:")
    return 0
