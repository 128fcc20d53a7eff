"""``mend-jax`` command line. User errors (``MendJaxError``) print one clear line and exit 2, without a traceback."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mend_jax.errors import MendJaxError
from mend_jax.weights.registry import DEFAULT_MODEL, MODELS


def _model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"registry name ({', '.join(MODELS)}), a transformers folder, a .gguf file, or a hub id "
                        f"(default: {DEFAULT_MODEL})")


def cmd_generate(args) -> int:
    from mend_jax.inference import greedy_generate
    from mend_jax.weights import load_model
    model = load_model(args.model)
    text = greedy_generate(model, args.prompt, args.max_new_tokens)
    print(args.prompt + text)
    return 0


def cmd_perplexity(args) -> int:
    from mend_jax.inference import perplexity
    from mend_jax.weights import load_model
    path = Path(args.text_file)
    if not path.is_file():
        raise MendJaxError(f"text file not found: {path}")
    model = load_model(args.model)
    text = path.read_bytes().decode("utf-8", errors="replace")
    ids = model.tokenizer(text)["input_ids"]
    if args.max_tokens:
        ids = ids[: args.max_tokens]
    if len(ids) < 2:
        raise MendJaxError(f"{path} holds fewer than 2 tokens; nothing to score")
    res = perplexity(model, ids, window=args.window)
    print(json.dumps({"model": model.name, **res}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mend-jax", description="MEND model editing in JAX")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="greedy continuation of a prompt")
    _model_arg(g)
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=20)
    g.set_defaults(func=cmd_generate)

    p = sub.add_parser("perplexity", help="perplexity of a text file (JSON line on stdout)")
    _model_arg(p)
    p.add_argument("--text-file", required=True)
    p.add_argument("--max-tokens", type=int, default=None, help="score only the first N tokens")
    p.add_argument("--window", type=int, default=1024, help="non-overlapping window length (default 1024)")
    p.set_defaults(func=cmd_perplexity)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


def _register_train(sub):
    from mend_jax.training.cli import register
    register(sub)


def _register_editing(sub):
    from mend_jax.commands import register
    register(sub)


def _register_plan(sub):
    from mend_jax.planner import register_plan_command
    register_plan_command(sub)


_EXTRA_COMMANDS: list = [_register_train, _register_editing, _register_plan]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MendJaxError as e:
        print(f"mend-jax: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mend-jax: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
