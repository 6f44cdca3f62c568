"""``optscale run``: adaptive Best-of-N online — a policy decides per problem how many samples to draw.

Without ``--base-url`` the embedded model (llama.cpp, SmolLM2-135M-Instruct) and the self-certainty
scorer are used, so ``optscale run --demo`` works on a fresh machine with no server. Results go to
``--out`` (one JSON line per problem) with a per-sample checkpoint beside it; running the same command
again resumes an interrupted run. A progress bar goes to stderr and a summary table (or ``--json``)
to stdout.
"""

from __future__ import annotations

import argparse
import sys

from optscale.cli._common import add_json_flag, emit_json


def add_problem_args(p: argparse.ArgumentParser) -> None:
    """Options choosing the problems (shared by ``run`` and ``generate``)."""
    p.add_argument(
        "problems",
        metavar="PROBLEMS",
        nargs="?",
        help="problem file: JSON or JSON Lines of question/answer records (the paper's math500_test.json, "
        "gsm8k_test.json, aime24.json, aime25.json, amc23.json, or any such file; a sample pool also works)",
    )
    p.add_argument(
        "--demo", action="store_true", help=f"use the built-in demo set (20 easy arithmetic word problems; the first {DEMO_DEFAULT_LIMIT} unless --limit)"
    )
    p.add_argument("--limit", type=int, default=None, help="only the first LIMIT problems")
    p.add_argument(
        "--question-field", default=None, help="field holding the question (default: found automatically)"
    )
    p.add_argument(
        "--answer-field", default=None, help="field holding the gold answer (default: found automatically)"
    )
    p.add_argument(
        "--id-field", default=None, help="field holding the problem id (default: id/unique_id or position)"
    )


#: default --max-tokens with a server / with the embedded CPU model
MAX_TOKENS_SERVER = 1024
MAX_TOKENS_EMBEDDED = 192
#: default N_max with a server / with the embedded CPU model
N_MAX_SERVER = 16
N_MAX_EMBEDDED = 8
#: problems of the demo set that ``--demo`` runs unless --limit says otherwise (about 1-2 minutes on 2 cores)
DEMO_DEFAULT_LIMIT = 6
#: default policy; verifier-free self-certainty scores of a small model concentrate around 0.4-0.7, where a
#: PRM-scale target s* = 0.95 is unreachable (N* = N_max always), so with those scorers the default target
#: sits on their scale
DEFAULT_METHOD = "optscale0"
DEFAULT_METHOD_SELF_CERTAINTY = "optscale0:target=0.6,alpha=0.1"


def add_generation_args(p: argparse.ArgumentParser) -> None:
    """Options of the model, the scorer and sampling (shared by ``run`` and ``generate``)."""
    g = p.add_argument_group("model (default: the embedded SmolLM2-135M-Instruct via llama.cpp)")
    g.add_argument(
        "--base-url",
        default=None,
        help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (vLLM, SGLang, llama.cpp server, OpenAI)",
    )
    g.add_argument("--model", default=None, help="model name served at --base-url (required with it)")
    g.add_argument(
        "--api-key", default=None, help="API key for --base-url (default: $OPENAI_API_KEY if set, else none)"
    )
    g.add_argument(
        "--model-path", default=None, help="GGUF file for the embedded model instead of SmolLM2-135M"
    )
    g.add_argument(
        "--timeout", type=float, default=60.0,
        help="seconds one request to --base-url may take before it is retried (default 60)",
    )
    g.add_argument(
        "--max-retries", type=int, default=4,
        help="retries of a request to --base-url after a timeout, a connection error, 429 or 5xx, with "
        "exponential backoff (default 4); then the run stops with the error",
    )
    g.add_argument(
        "--scorer",
        default="self-certainty",
        help="verifier: self-certainty (default: exp of the mean token log-probability of the sample), "
        "mean-logprob, self-certainty:method=kl, prm:<hf-model>[,device=cuda] (Qwen2.5-Math-PRM layout), "
        "prm-shepherd:<hf-model>, prm-rlhflow:<hf-model>, reward-endpoint:<url> (vLLM pooling API), "
        "judge[:<base-url>,model=NAME], or 'none' (policies without scores)",
    )
    s = p.add_argument_group("sampling")
    s.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help=f"most tokens per sample (default {MAX_TOKENS_SERVER} with --base-url, {MAX_TOKENS_EMBEDDED} for "
        "the small embedded CPU model)",
    )
    s.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (default 0.7)")
    s.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling top-p (default 1.0)")
    s.add_argument(
        "--seed",
        type=int,
        default=0,
        help="run seed; each sample's seed is derived from (seed, problem id, sample index), so runs are "
        "reproducible and resumable (default 0)",
    )
    s.add_argument(
        "--concurrency",
        type=int,
        default=4,
        help="problems in flight at once (default 4; samples of a wave run together)",
    )
    s.add_argument(
        "--prompt-template",
        default=None,
        help="prompt with a {question} placeholder (default: step-by-step reasoning, final answer in \\boxed{})",
    )
    s.add_argument("--prompt-file", default=None, help="read the prompt template from this file")
    o = p.add_argument_group("output")
    o.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="start over, overwriting --out and its checkpoint (default: resume an interrupted run)",
    )
    o.add_argument(
        "--no-texts", dest="save_texts", action="store_false", help="do not store completion texts"
    )
    o.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: only when stderr is a terminal)",
    )
    add_json_flag(p)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "run",
        help="adaptive Best-of-N online: a policy decides per problem how many samples to draw",
        description=(
            "Solve problems with adaptive Best-of-N: for each problem the policy (--method) decides waves "
            "of samples until it stops, then picks the answer. Samples are generated by the embedded "
            "model or an OpenAI-compatible server and scored by --scorer. Each finished problem is "
            "appended to --out (JSON Lines) and each sample to <out>.samples.jsonl, so running the same "
            "command again resumes an interrupted run."
        ),
    )
    add_problem_args(p)
    p.add_argument(
        "--method",
        default=None,
        help="policy spec for make_policy: optscale0, optscale0-seq, optscalet, optscalet-seq, bon, sc, wsc, "
        "esc, asc, mr-thinking (dsc is a batch policy: use it offline with 'optscale eval'), with options "
        "as 'name:key=val,key=val' (default optscale0, i.e. s*=0.95, "
        f"alpha=0.05; with the self-certainty scorer {DEFAULT_METHOD_SELF_CERTAINTY}, on that score's scale)",
    )
    p.add_argument(
        "--n-max", type=int, default=None,
        help=f"most samples per problem, N_max (default {N_MAX_SERVER} with --base-url, {N_MAX_EMBEDDED} with "
        "the embedded model)",
    )
    p.add_argument(
        "--equiv",
        choices=("math", "exact", "number", "choice"),
        default="math",
        help="answer equivalence used to cluster sampled answers (default math, via math-verify)",
    )
    p.add_argument(
        "--out",
        default="results.jsonl",
        help="results file, one JSON line per problem (default results.jsonl)",
    )
    add_generation_args(p)
    p.set_defaults(func=main)
    return p


# --------------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------------


def load_cli_problems(args):
    """The problems chosen by PROBLEMS / --demo / --limit / --*-field."""
    from optscale.errors import ParameterError
    from optscale.online.data import load_demo, load_problems

    if args.limit is not None and args.limit < 1:
        raise ParameterError("--limit", f"must be >= 1, got {args.limit}")
    if args.demo and args.problems:
        raise ParameterError("PROBLEMS", "give either a problem file or --demo, not both")
    if args.demo:
        return load_demo(limit=args.limit if args.limit is not None else DEMO_DEFAULT_LIMIT)
    if not args.problems:
        raise ParameterError("PROBLEMS", "give a problem file (JSON / JSON Lines) or --demo")
    problems = load_problems(
        args.problems,
        limit=args.limit,
        question_field=args.question_field,
        answer_field=args.answer_field,
        id_field=args.id_field,
    )
    if not problems:
        from optscale.errors import InputError

        raise InputError(args.problems, None, None, "no problems in the file")
    return problems


def prompt_template(args) -> str:
    from optscale.errors import ParameterError
    from optscale.online.runner import DEFAULT_PROMPT_TEMPLATE

    if args.prompt_template and args.prompt_file:
        raise ParameterError("--prompt-file", "give either --prompt-template or --prompt-file, not both")
    if args.prompt_file:
        from optscale.jsonio import read_text

        return read_text(args.prompt_file)  # missing, directory, binary, non-UTF-8: one error naming the file
    return args.prompt_template or DEFAULT_PROMPT_TEMPLATE


def max_tokens(args) -> int:
    """--max-tokens, or its default for the chosen backend."""
    if args.max_tokens is not None:
        return args.max_tokens
    return MAX_TOKENS_SERVER if args.base_url else MAX_TOKENS_EMBEDDED


def run_config(args, template: str, n_max: int, **fields):
    """The :class:`~optscale.online.runner.RunConfig` of ``run`` and ``generate`` (sampling, checkpointing);
    ``fields`` adds what differs between them (``equiv``, ``results_path``, ``prior_fn``)."""
    from optscale.online.runner import RunConfig, SamplingConfig

    sampling = SamplingConfig(
        n_max=n_max,
        max_tokens=max_tokens(args),
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        equiv=fields.pop("equiv", "math"),
    )
    return RunConfig(
        sampling=sampling,
        prompt_template=template,
        concurrency=args.concurrency,
        resume=args.resume,
        progress=args.progress,
        save_texts=args.save_texts,
        **fields,
    )


def make_generator(args, scorer=None):
    """The generator chosen by --base-url/--model/--api-key/--model-path (embedded model by default); it
    returns as many top log-probabilities per token as ``scorer`` needs (``scorer.top_logprobs``)."""
    import os

    from optscale.errors import ParameterError
    from optscale.online.generators import default_generator

    k = int(getattr(scorer, "top_logprobs", 0) or 0)
    extra = {"top_logprobs": k} if k > 1 else {}
    if args.base_url:
        api_key = args.api_key if args.api_key is not None else os.environ.get("OPENAI_API_KEY")
        if not (args.timeout > 0):
            raise ParameterError("--timeout", f"must be > 0 seconds, got {args.timeout}")
        if args.max_retries < 0:
            raise ParameterError("--max-retries", f"must be >= 0, got {args.max_retries}")
        return default_generator(args.base_url, args.model, api_key=api_key, timeout=args.timeout,
                                 max_retries=args.max_retries, **extra)
    return default_generator(model_path=args.model_path, **extra)


def make_cli_scorer(args):
    """The scorer chosen by --scorer (None for 'none')."""
    if args.scorer.strip().lower() in ("none", "off", ""):
        return None
    from optscale.online.scorers import make_scorer

    return make_scorer(args.scorer)


def print_summary(summary, args, *, what: str = "run") -> None:
    if args.json:
        emit_json(summary.to_dict())
    else:
        print(summary.to_table())


def _prior_fn(policy):
    """Priors for OptScale^t from the bundled predictor, or None for policies that do not use them."""
    if not getattr(policy, "needs_prior", False):
        return None
    from optscale.predictor import load_default

    predictor = load_default()

    def fn(question: str):
        return tuple(float(x) for x in predictor.priors_for([question])[0])

    return fn


# --------------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------------


def main(args) -> int:
    from optscale.errors import ParameterError
    from optscale.online.runner import run
    from optscale.policies import make_policy

    problems = load_cli_problems(args)
    template = prompt_template(args)
    if args.method is None:
        self_certainty = args.scorer.strip().lower().startswith(("self-certainty", "mean-logprob"))
        args.method = DEFAULT_METHOD_SELF_CERTAINTY if self_certainty else DEFAULT_METHOD
    if args.n_max is None:
        args.n_max = N_MAX_SERVER if args.base_url else N_MAX_EMBEDDED
    policy = make_policy(args.method)
    if args.n_max < 1:
        raise ParameterError("--n-max", f"must be >= 1, got {args.n_max}")
    scorer = make_cli_scorer(args)
    if scorer is None and getattr(policy, "needs_scores", False):
        raise ParameterError(
            "--scorer", f"--method {args.method} needs scores; choose a scorer other than 'none'"
        )
    prior_fn = _prior_fn(policy)
    if prior_fn is not None and not args.scorer.strip().lower().startswith("prm"):
        print(
            f"optscale run: warning: the shipped prior predictor was trained on process-reward-model scores "
            f"(Qwen2.5-Math-PRM-7B on DeepSeek-R1-Distill-Qwen-7B solutions to MATH problems); with --scorer "
            f"{args.scorer} its priors are on another score scale and can dominate the MAP fit",
            file=sys.stderr,
        )
    config = run_config(args, template, args.n_max, equiv=args.equiv, results_path=args.out, prior_fn=prior_fn)
    generator = make_generator(args, scorer)
    summary = run(problems, generator, scorer, policy, config=config)
    print_summary(summary, args)
    if summary.completed < summary.problems:  # pragma: no cover - run() raises before this
        print(f"optscale run: {summary.problems - summary.completed} problems unfinished", file=sys.stderr)
        return 1
    return 0
