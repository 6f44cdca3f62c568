"""optscale serve: configuration (dataclass + YAML with env secrets), request parsing and error shapes.

No server is started here (see test_server.py for the HTTP tests)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("yaml")

from optscale.errors import InputError, ParameterError  # noqa: E402
from optscale.server.config import ServerConfig, load_config  # noqa: E402
from optscale.server.errors import APIError, from_exception  # noqa: E402
from optscale.server.protocol import alias_names, parse_alias, parse_request  # noqa: E402


def test_import_optscale_server_is_light():
    code = "import sys, optscale, optscale.server; print(any(m in sys.modules for m in ('fastapi', 'yaml', 'prometheus_client', 'uvicorn')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------- config
def test_default_config_is_the_embedded_model_with_self_certainty():
    c = ServerConfig()
    assert c.embedded and c.scorer == "self-certainty" and c.host == "127.0.0.1" and c.port == 8000
    assert c.default_method() == "optscale0:target=0.6,alpha=0.1"  # optscale run's default for this scorer
    assert c.default_n_max() == 8 and c.default_max_tokens() == 192
    up = ServerConfig(upstream="http://127.0.0.1:9/v1", model="m", scorer="reward-endpoint:http://x/pooling")
    assert up.default_method() == "optscale0" and up.default_n_max() == 16 and up.default_max_tokens() == 1024


@pytest.mark.parametrize(
    "kw, name",
    [
        ({"port": 70000}, "port"),
        ({"upstream": "localhost:8000"}, "upstream"),
        ({"upstream": "http://127.0.0.1:1/v1"}, "model"),
        ({"scorer_failure": "ignore"}, "scorer_failure"),
        ({"max_queue": -1}, "max_queue"),
        ({"n_max": 100}, "n_max"),
        ({"method": "nosuch"}, "policy"),
        ({"api_keys": ["ok", ""]}, "api_keys"),
        ({"keepalive_s": 0}, "keepalive_s"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kw, name):
    with pytest.raises(ParameterError) as e:
        ServerConfig(**kw)
    assert e.value.name == name


def test_yaml_config_with_env_secrets(tmp_path):
    p = tmp_path / "serve.yaml"
    p.write_text(textwrap.dedent("""\
        server:
          port: 9001
        upstream:
          url: http://127.0.0.1:8001/v1
          model: qwen
          api_key: os.environ/UP_KEY
        scorer:
          spec: reward-endpoint:http://127.0.0.1:8002/pooling
          on_failure: vote
        defaults:
          method: "optscale0:target=0.9"
          n_max: 12
        limits: {max_concurrent_requests: 4, max_queue: 2}
        auth:
          api_keys: ["${CLIENT_KEY}", "prefix-${CLIENT_KEY}"]
    """))
    c = load_config(p, env={"UP_KEY": "up-secret", "CLIENT_KEY": "k1"})
    assert c.port == 9001 and c.upstream == "http://127.0.0.1:8001/v1" and c.model == "qwen"
    assert c.upstream_api_key == "up-secret" and c.api_keys == ("k1", "prefix-k1")
    assert c.scorer_failure == "vote" and c.n_max == 12 and c.max_queue == 2
    assert "up-secret" not in repr(c) and "k1" not in repr(c)  # secrets never printed
    # command-line overrides win
    assert load_config(p, env={"UP_KEY": "u", "CLIENT_KEY": "k"}, port=9002).port == 9002


@pytest.mark.parametrize(
    "text, line, field, words",
    [
        ("upstream:\n  url: http://x/v1\n  modle: m\n", 3, "upstream.modle", "unknown setting"),
        ("sever:\n  port: 1\n", 1, "sever", "unknown section"),
        ("auth:\n  api_keys: [os.environ/NOPE]\n", None, "auth.api_keys[0]", "NOPE is not set"),
        ("defaults:\n  method: bon\n  n_max: 0\n", 3, "defaults.n_max", "n_max"),
        ("server:\n  port: 1\n  host: a: b\n", 3, None, "not valid YAML"),
        ("upstream:\n  url: http://x/v1\n", None, "upstream.model", "required"),
    ],
)
def test_yaml_config_errors_name_file_line_and_field(tmp_path, text, line, field, words):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(InputError) as e:
        load_config(p, env={})
    assert e.value.file == str(p) and e.value.field == field and words in str(e.value)
    if line is not None:
        assert e.value.line == line


# ---------------------------------------------------------------------------------------------- protocol
CFG = ServerConfig(upstream="http://127.0.0.1:9/v1", model="m", scorer="reward-endpoint:http://127.0.0.1:9/pooling")


def parse(body, headers=None, endpoint="chat", cfg=CFG, **kw):
    return parse_request(body, headers or {}, endpoint, cfg, {"m", "other"}.__contains__, **kw)


def chat(**kw):
    return {"model": "m", "messages": [{"role": "user", "content": "What is 2+2?"}], **kw}


def test_alias_parsing():
    assert parse_alias("optscale:m") == ("m", None)
    assert parse_alias("optscale-bon:org/m:8b") == ("org/m:8b", "bon")
    assert parse_alias("m") == ("m", None)
    names = alias_names("m")
    assert "optscale:m" in names and "optscale-esc:m" in names and "optscale-dsc:m" not in names


def test_precedence_body_over_header_over_alias_over_default():
    body = chat(model="optscale-bon:m", optscale={"n_max": 6})
    headers = {"x-optscale-n-max": "5", "x-optscale-method": "sc", "x-optscale-seed": "7"}
    plan = parse(body, headers)
    assert plan.n_max == 6 and plan.sources["n_max"] == "body"
    assert plan.method == "sc" and plan.sources["method"] == "header"  # header beats alias
    assert plan.seed == 7 and plan.sources["seed"] == "header"
    plan = parse(chat(model="optscale-bon:m"))
    assert plan.method == "bon" and plan.sources["method"] == "alias" and plan.model == "m"
    plan = parse(chat())
    assert plan.method == CFG.default_method() and plan.n_max == CFG.default_n_max()
    assert plan.sources["method"] == "default" and plan.sources["seed"] == "random"


def test_policy_overrides_and_seed_from_request():
    plan = parse(chat(seed=11, optscale={"method": "optscale0", "target": 0.8, "alpha": 0.2, "k": 3}))
    assert (plan.policy.target, plan.policy.alpha, plan.policy.k) == (0.8, 0.2, 3)
    assert plan.seed == 11 and plan.sources["seed"] == "request seed"


def test_passthrough_keeps_every_other_field_and_strips_optscale():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    body = chat(tools=tools, response_format={"type": "json_object"}, top_k=20, stop=["\n\n"], user="u",
                chat_template_kwargs={"enable_thinking": False}, logprobs=True, top_logprobs=2,
                optscale={"n_max": 4}, max_completion_tokens=50, temperature=0.3, n=2, stream=False)
    plan = parse(body, needs_logprobs=False)
    assert plan.extra_body == {"tools": tools, "response_format": {"type": "json_object"}, "top_k": 20,
                               "stop": ["\n\n"], "user": "u", "chat_template_kwargs": {"enable_thinking": False},
                               "logprobs": True, "top_logprobs": 2}
    assert plan.max_tokens == 50 and plan.temperature == 0.3 and plan.n == 2
    # a scorer that needs log-probabilities owns those fields
    assert "logprobs" not in parse(body, needs_logprobs=True).extra_body


@pytest.mark.parametrize(
    "body, headers, param, status",
    [
        (chat(optscale={"nmax": 3}), {}, "optscale.nmax", 400),
        (chat(), {"x-optscale-budget": "3"}, "x-optscale-budget", 400),
        (chat(optscale={"n_max": 0}), {}, "optscale.n_max", 400),
        (chat(optscale={"n_max": 1000}), {}, "optscale.n_max", 400),
        (chat(optscale={"method": "bon", "alpha": 0.1}), {}, "optscale.alpha", 400),
        (chat(optscale={"method": "dsc"}), {}, "optscale.method", 400),
        (chat(optscale={"method": "nosuch"}), {}, "optscale.method", 400),
        (chat(optscale={"target": 1.5}), {}, "optscale.target", 400),
        (chat(optscale={"deadline": -1}), {}, "optscale.deadline", 400),
        (chat(optscale={"return_samples": "maybe"}), {}, "optscale.return_samples", 400),
        (chat(optscale={"n_max": 2, "method": "optscale0"}), {}, "optscale.n_max", 400),  # k=4 > n_max
        (chat(optscale="fast"), {}, "optscale", 400),
        (chat(n=0), {}, "n", 400),
        (chat(temperature="hot"), {}, "temperature", 400),
        (chat(messages=[]), {}, "messages", 400),
        (chat(messages=[{"content": "x"}]), {}, "messages[0]", 400),
        (chat(model="nosuch"), {}, "model", 404),
        (chat(model="optscale:nosuch"), {}, "model", 404),
        ({"messages": [{"role": "user", "content": "x"}]}, {}, "model", 400),
        ([1, 2], {}, None, 400),
        (chat(optscale={"method": "esc"}, seed="x"), {}, "seed", 400),
    ],
)
def test_bad_requests_are_400_or_404_naming_the_parameter(body, headers, param, status):
    with pytest.raises(APIError) as e:
        parse(body, headers)
    assert e.value.status == status and e.value.param == param, e.value
    b = e.value.body()["error"]
    assert set(b) == {"message", "type", "param", "code"} and b["message"]


def test_completions_prompt_and_question():
    plan = parse({"model": "m", "prompt": ["2+2="], "echo": False}, endpoint="completions")
    assert plan.prompt == "2+2=" and plan.question == "2+2=" and plan.extra_body == {"echo": False}
    with pytest.raises(APIError) as e:
        parse({"model": "m", "prompt": ["a", "b"]}, endpoint="completions")
    assert e.value.param == "prompt"


def test_chat_question_is_the_last_user_message_and_tool_call_messages_pass():
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "first"},
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                  "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c", "content": "42"},
            {"role": "user", "content": [{"type": "text", "text": "and now?"}]}]
    plan = parse(chat(messages=msgs))
    assert plan.question == "and now?" and plan.prompt[2]["content"] is None and len(plan.prompt) == 5


def test_no_scorer_rejects_score_policies():
    with pytest.raises(APIError) as e:
        parse(chat(optscale={"method": "bon"}), has_scorer=False)
    assert e.value.param == "optscale.method"
    assert parse(chat(optscale={"method": "sc"}), has_scorer=False).method == "sc"


# ---------------------------------------------------------------------------------------------- errors
def test_exceptions_map_to_openai_statuses():
    from optscale.online.generators import GenerationError
    from optscale.online.scorers import ScoringError

    assert from_exception(GenerationError("x: no complete answer within timeout=1 s", status=None)).status == 504
    assert from_exception(GenerationError("connection error: ConnectError", status=None)).status == 503
    assert from_exception(GenerationError("HTTP 500", status=500)).status == 502
    e = from_exception(GenerationError("HTTP 400: bad tools", status=400))
    assert e.status == 400 and "bad tools" in e.message
    assert from_exception(GenerationError("HTTP 429", status=429)).headers["Retry-After"]
    assert from_exception(ScoringError(None, "ConnectError: refused", "rm")).status == 503
    assert from_exception(ScoringError(0, "score nan is not in [0, 1]", "rm")).status == 502
    assert from_exception(ParameterError("top_p", "bad")).param == "top_p"
