"""The ``optscale nstar`` sub-command."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from optscale.cli import main
from optscale.theory import cdf


def _json(capsys, *argv):
    assert main(["nstar", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_nstar_json_matches_formula(capsys):
    out = _json(capsys, "--mu", "0.7", "--sigma", "0.15", "--target", "0.95", "--confidence", "0.95",
                "--max-n", "1000")
    f = float(cdf(0.95, 0.7, 0.15))
    expected = math.ceil(math.log(0.05) / math.log(f))
    assert out["n_star"] == expected and out["reachable"] is True
    assert abs(out["cdf_target"] - f) < 1e-12
    assert out["p_best_reaches_target"] >= 0.95
    assert 1 - f ** (expected - 1) < 0.95   # N* - 1 samples would not do


def test_alpha_is_one_minus_confidence(capsys):
    a = _json(capsys, "--mu", "0.5", "--sigma", "0.2", "--target", "0.8", "--alpha", "0.1")
    c = _json(capsys, "--mu", "0.5", "--sigma", "0.2", "--target", "0.8", "--confidence", "0.9")
    assert a["n_star"] == c["n_star"] and abs(a["alpha"] - 0.1) < 1e-12


def test_unreachable_and_clipped(capsys):
    out = _json(capsys, "--mu", "0.5", "--sigma", "0.0001", "--target", "0.9", "--max-n", "16")
    assert out["reachable"] is False and out["n_star"] == 16 and out["p_best_reaches_target"] == 0.0
    out = _json(capsys, "--mu", "0.2", "--sigma", "0.1", "--target", "0.6", "--max-n", "3")
    assert out["reachable"] is True and out["n_star"] == 3 and out["exact"] > 3


def test_table_output(capsys):
    assert main(["nstar", "--mu", "0.7", "--sigma", "0.15", "--target", "0.95"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("N* = 64") and "clipped" in text and "P(best of N* >= s*)" in text


def test_bad_parameters_give_one_line_error(capsys):
    assert main(["nstar", "--mu", "0.5", "--sigma", "-1", "--target", "0.9"]) == 2
    assert "sigma" in capsys.readouterr().err
    assert main(["nstar", "--mu", "0.5", "--sigma", "0.1", "--target", "0.9", "--confidence", "1.5"]) == 2
    assert "confidence" in capsys.readouterr().err
    assert main(["nstar", "--mu", "0.5", "--sigma", "0.1", "--target", "0.9", "--max-n", "0"]) == 2
    assert "--max-n" in capsys.readouterr().err  # the CLI names its own option


def test_subprocess_entry_point():
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from optscale.cli import main; sys.exit(main())",
         "nstar", "--mu", "0.6", "--sigma", "0.2", "--target", "0.9", "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    f = float(cdf(0.9, 0.6, 0.2))
    assert out["n_star"] == min(64, math.ceil(math.log(0.05) / math.log(f)))


def test_json_is_strict_json(capsys):
    """Non-finite values (ln α / ln F(s*) when the target is unreachable) are written as null, not as
    the non-standard Infinity; 1 - 0.95 is reported as 0.05."""
    import json

    assert main(["nstar", "--mu", "30", "--sigma", "0.8", "--target", "1", "--json"]) == 0

    def reject(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    out = json.loads(capsys.readouterr().out, parse_constant=reject)
    assert out["reachable"] is False and out["exact"] is None and out["alpha"] == 0.05
