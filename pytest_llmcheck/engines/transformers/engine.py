"""The default engine: transformers + torch on the CPU, optionally INT4 via torchao.

torch and transformers are imported only when a model is loaded, so importing the
plugin stays cheap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmcheck.compat.torch import cpu_supports
from pytest_llmcheck.config.numerics import NATIVE, PORTABLE, recipe
from pytest_llmcheck.config.registry import ModelRef
from pytest_llmcheck.engines.base import Answer, GenerationConfig, LoadFacts
from pytest_llmcheck.engines.transformers import decode_check, decode_step
from pytest_llmcheck.engines.transformers.conversions import (
    code_problem,
    remote_code_message,
    unknown_architecture_message,
)
from pytest_llmcheck.engines.transformers.cpu import cpu_capability, is_x86
from pytest_llmcheck.engines.transformers.fastpath import FastDecoder, Unsupported
from pytest_llmcheck.engines.transformers.quantize import Quantizer, QuantReport, quiet_loggers
from pytest_llmcheck.engines.transformers.weights import library_versions, load_model, weights_identity
from pytest_llmcheck.errors import LlmcheckError
from pytest_llmcheck.storage.cache import Cache

if TYPE_CHECKING:
    import torch


DECODE_CHOICES = ("fast", "python", "generate")
PROBE = "Hello! Who are you?"  # the prompt the fast decode loop is checked on at load


class ModelLoadError(LlmcheckError):
    """The model files are there but transformers cannot load them as asked."""


def numerics_here(asked: str) -> tuple[str, str | None]:
    """(the numerics this engine runs, why not portable when portable was asked and cannot be).

    Portable means torch's kernels held to AVX2 + FMA (the plugin sets ATEN_CPU_CAPABILITY
    before any conftest can import torch, see ``config/numerics.py``): the widest level every
    x86-64-v3 CPU runs, so the same instructions in the same order everywhere. torch reads
    that variable once, at its first kernel call (not at import): torch at another level on a
    CPU with AVX2 means something ran torch before the plugin could hold it, and the load is
    refused, since its answers would belong to this CPU while the fingerprint said otherwise.
    A CPU without AVX2 (or not x86-64) cannot run the portable kernels at all: it runs
    natively, and says so.
    """
    if asked != PORTABLE:
        return NATIVE, None
    import platform

    import torch

    level = str(torch.backends.cpu.get_cpu_capability())
    if level == "AVX2":
        return PORTABLE, None
    if is_x86() and (level.startswith("AVX512") or cpu_supports("AVX2")):
        raise ModelLoadError(
            f"portable numerics need torch's kernels held to AVX2, but torch chose its kernels ({level}) "
            "before pytest-llmcheck could set ATEN_CPU_CAPABILITY=avx2 (something ran torch first, e.g. "
            "another plugin at import); set ATEN_CPU_CAPABILITY=avx2 in the environment, or use "
            "--llm-numerics=native"
        )
    return NATIVE, f"portable needs x86-64 with AVX2+FMA; torch reports {level} on {platform.machine()}"


@contextmanager
def portable_arithmetic(numerics: str) -> Iterator[None]:
    """oneDNN off while portable answers are computed (and their weights packed).

    Whether torch hands a bf16 matmul (the lm_head) to oneDNN depends on a check of the CPU,
    not on ATEN_CPU_CAPABILITY, and oneDNN then picks its own kernel by the CPU. With it off,
    they run in ATen's own kernels, held to AVX2 like the rest. Restored afterwards, so a
    native model in the same process keeps oneDNN.
    """
    if numerics != PORTABLE:
        yield
        return
    import torch

    mkldnn = torch.backends.mkldnn
    with mkldnn.flags(  # only `enabled` changes: the others are passed as they are
        enabled=False, deterministic=mkldnn.deterministic, allow_tf32=mkldnn.allow_tf32,
        fp32_precision=mkldnn.fp32_precision,
    ):
        yield


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """No progress bars or advice from transformers while loading: pytest would capture
    them into every failure report of the model's first test. The plugin prints its own
    one-line progress instead."""
    import functools

    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    gguf_tqdm = gguf_utils.tqdm  # type: ignore[attr-defined]  # a plain tqdm that ignores the switch above
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    gguf_utils.tqdm = functools.partial(gguf_tqdm, disable=True)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        gguf_utils.tqdm = gguf_tqdm  # type: ignore[attr-defined]
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def _first_token_streamer() -> Any:
    """A streamer that notes when the first new token arrives (for time to first token)."""
    from transformers.generation.streamers import BaseStreamer

    class FirstToken(BaseStreamer):
        def __init__(self) -> None:
            self.calls = 0
            self.first: float | None = None

        def put(self, value: Any) -> None:
            self.calls += 1
            if self.calls == 2 and self.first is None:  # call 1 is the prompt
                self.first = time.perf_counter()

        def end(self) -> None:
            pass

        def first_token(self) -> None:  # the fast loop calls this directly
            self.first = time.perf_counter()

    return FirstToken()


class TransformersEngine:
    """One loaded (and usually quantized) model answering chat prompts."""

    name = "transformers"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        ref: ModelRef,
        quant: QuantReport,
        *,
        recipe: dict[str, Any],
        load_seconds: float,
        threads: int,
        from_cache: bool = False,
        conversion: dict[str, Any] | None = None,
        numerics: str = NATIVE,
        numerics_note: str | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.ref = ref
        self.quant = quant
        self.recipe = recipe
        self.threads = threads
        self.numerics = numerics  # what runs: PORTABLE or NATIVE (see numerics_here)
        self.numerics_note = numerics_note  # why native when portable was asked
        # a native conversion (Qwen v1 -> Qwen2, ChatGLM3 -> GLM): its tag, without the timing
        self.conversion = {k: v for k, v in (conversion or {}).items() if k != "seconds"} or None
        summary = quant.summary()
        details: dict[str, Any] = {"quantization": recipe, "threads": threads, "numerics": numerics}
        if numerics_note:  # said on the summary line: these answers hold on this CPU kind only
            summary += f"; native numerics ({numerics_note})"
            details["numerics_note"] = numerics_note
        converted_seconds = float((conversion or {}).get("seconds", 0.0))
        if self.conversion:
            how = f"{converted_seconds:.2f}s" if converted_seconds else "cached"
            summary += (f"; converted {self.conversion['from']} -> {self.conversion['to']} "
                        f"(mapping {self.conversion['mapping']}, {how})")
            details["conversion"] = {**self.conversion, "seconds": converted_seconds}
        self.facts = LoadFacts(
            seconds=load_seconds,
            summary=summary,
            quant=quant.method,
            from_cache=from_cache,
            prepare_seconds=quant.seconds + converted_seconds,
            details=details,
        )
        self.weights_id: dict[str, Any] = {}
        self._fingerprint: dict[str, Any] | None = None
        self.fast: FastDecoder | None = None  # the lean greedy loop, when verified on this model
        # generate()'s INT4 layers on the C++ step's int4_mm, when verified on this model
        self.products: Callable[[], AbstractContextManager[Any]] | None = None

    def use_fast_decode(self, cache: Cache | None = None, native: bool = True) -> str:
        """Switch greedy answers to :class:`FastDecoder` if it gives this model's own logits
        bit for bit on a probe prompt, with its step in C++ (``native``, built once per machine
        into ``cache``) when that checks out too; returns what was decided (kept in the load
        facts; the summary line says it when answers are slower than they could be)."""
        with portable_arithmetic(self.numerics):
            return self._use_fast_decode(cache, native)

    def _use_fast_decode(self, cache: Cache | None, native: bool) -> str:
        import torch

        torch.set_num_threads(self.threads)
        self.fast = None  # until this call's decision: an earlier loop may no longer hold
        self.products = None
        self.facts.details.pop("int4_product", None)
        self.facts.details.pop("lm_head_screen", None)
        step_problem: str | None = "--llm-decode=python" if not native else None
        checked = ""  # or how an earlier check is known
        try:
            decoder = FastDecoder.build(self.model, portable=self.numerics == PORTABLE)
            candidates: list[Any] = [None]
            if native:
                try:
                    how = decode_step.load_library(cache)
                    candidates.append(decode_step.build(decoder))
                except decode_step.StepUnavailable as exc:
                    step_problem = str(exc)
            problems, checked = self._check_steps(decoder, candidates, cache)
            problem = problems[0]
            if len(problems) > 1 and problems[1] is not None:
                step_problem = f"C++ step: {problems[1]}"
        except Unsupported as exc:
            problem = str(exc)
        slower = problem is not None or (native and step_problem is not None)
        if problem is not None:
            decision = f"generate() ({problem})"
            if native:
                self._use_products(cache)
        elif step_problem is None:
            decoder.native = candidates[1]
            self.fast = decoder
            decision = f"fast, C++ step ({how}; same logits as the model's forward on a probe{checked})"
            if (product := decode_step.int4_product(decoder.native)) != "none":
                self.facts.details["int4_product"] = product
            if decoder.screen or decoder.screen_problem:
                self.facts.details["lm_head_screen"] = (
                    "int8 screen, exact logits for its candidates" if decoder.screen
                    else f"off ({decoder.screen_problem})"
                )
        else:
            self.fast = decoder
            decision = (
                f"fast, Python step ({step_problem}; same logits as the model's forward on a probe{checked})"
            )
        summary = self.facts.summary.split("; decode: ")[0]  # what an earlier call said goes
        if slower:  # said on the summary line: it explains a slower model
            summary = f"{summary}; decode: {decision}"
        self.facts = dataclasses.replace(self.facts, summary=summary)
        self.facts.details["decode"] = decision
        return decision

    def _use_products(self, cache: Cache | None) -> None:
        """For a model the lean loop does not take: generate() with its INT4 layers on the C++
        step's ``int4_mm`` (the same bits as torch's AVX2 kernel, faster), if the model's
        forward gives the same logits with them on a probe (prompt and decode steps). Kept
        like the loop's check (``decode_check``); the load facts say what was decided."""
        try:
            decode_step.load_library(cache)
        except decode_step.StepUnavailable:
            return
        linears = decode_step.int4_linears(self.model)
        if not linears:
            return
        products = decode_step.int4_prompt(linears)
        inputs = self._encode(PROBE, None)
        fingerprint = {k: v for k, v in self.fingerprint().items()
                       if k not in ("decode", "model", "source", "revision")}
        label = f"generate(), INT4: int4_mm on {len(linears)} layers"
        key = decode_check.check_key(fingerprint, inputs["input_ids"][0].tolist(), threads=self.threads,
                                     steps=[label])
        entry = decode_check.entry_for(cache, key)
        recalled = decode_check.recall(entry, 1)
        if recalled is not None:
            problem = recalled[0][0]
        else:
            problem = decode_step.check_products(self.model, inputs, products)
            decode_check.remember(entry, [problem], False)
        if problem is None:
            self.products = products
            self.facts.details["int4_product"] = f"int4_mm on {len(linears)} layers, in generate()"

    def _check_steps(
        self, decoder: FastDecoder, candidates: list[Any], cache: Cache | None
    ) -> tuple[list[str | None], str]:
        """Each candidate step's problem (None: the model's own logits on the probe), and how it
        was known: checked now, or recalled from this machine's earlier check (``decode_check``)."""
        import torch

        inputs = self._encode(PROBE, None)
        # what the weights and the stack are, not what they are called: one check for one model
        # reached by two references (a hub id and its folder)
        fingerprint = {k: v for k, v in self.fingerprint().items()
                       if k not in ("decode", "model", "source", "revision")}
        # which INT4 product the C++ step runs (int4_mm or torch's kernel) is part of what was checked
        screen = ", lm_head screen" if decoder.screen else ""
        steps = ["python" if c is None else f"c++, INT4: {decode_step.int4_product(c)}{screen}"
                 for c in candidates]
        probe = inputs["input_ids"][0].tolist()
        key = decode_check.check_key(fingerprint, probe, threads=self.threads, steps=steps)
        entry = decode_check.entry_for(cache, key)
        recalled = decode_check.recall(entry, len(candidates))
        if recalled is not None:
            problems, head_mv, decoder.screen_problem = recalled
            decoder.head_mv = head_mv  # the lm_head kernel the check ran with, not this session's timing
            for candidate in candidates[1:]:
                candidate.set_head_mv(head_mv)
            self._screen_verdict(decoder, candidates)
            return problems, ", checked at an earlier load on this machine"
        with torch.inference_mode():
            problems = decoder.verify_steps(inputs, candidates)
            if problems[0] is not None and decoder.head_mv:  # mv timed faster: linear is the model's own
                decoder.head_mv = False
                for candidate in candidates[1:]:
                    candidate.set_head_mv(False)
                problems = decoder.verify_steps(inputs, candidates)
        decode_check.remember(entry, problems, decoder.head_mv, decoder.screen_problem)
        self._screen_verdict(decoder, candidates)
        return problems, ""

    @staticmethod
    def _screen_verdict(decoder: FastDecoder, candidates: list[Any]) -> None:
        """The C++ step's lm_head screen stays on only where its check found nothing."""
        if decoder.screen and decoder.screen_problem is not None:
            for candidate in candidates[1:]:
                decode_step.screen_off(candidate)
            decoder.screen = False

    @classmethod
    def load(
        cls,
        ref: ModelRef,
        folder: Path,
        quantizer: Quantizer,
        *,
        threads: int,
        trust_remote_code: bool = False,
        cache: Cache | None = None,
        decode: str = "fast",
        numerics: str = NATIVE,
    ) -> TransformersEngine:
        """Load from ``folder`` (a model folder, or the folder of a GGUF) and quantize.

        With a cache, the converted and quantized weights are reused across sessions.
        ``decode="fast"`` answers greedy prompts with the lean loop when it checks out.
        ``numerics="portable"`` (the plugin's default, see ``config/numerics.py``): answers that hold
        on every x86-64 CPU from AVX2 up; checked here, before any weight is touched.
        """
        import torch

        numerics, numerics_note = numerics_here(numerics)
        torch.set_num_threads(threads)
        problem = None if ref.gguf_file else code_problem(folder)
        if problem == "unknown":
            raise ModelLoadError(unknown_architecture_message(ref.name, ref.spec, folder))
        if problem == "remote" and not trust_remote_code:
            raise ModelLoadError(remote_code_message(ref.name, ref.spec, folder, None))
        try:
            with quiet_loggers("torchao", "torch.utils._pytree"), quiet_transformers(), \
                    portable_arithmetic(numerics):
                loaded = load_model(ref, folder, quantizer, cache=cache, trust_remote_code=trust_remote_code,
                                    numerics=numerics)
        except ValueError as exc:
            text = str(exc)
            if "trust_remote_code" in text:
                raise ModelLoadError(remote_code_message(ref.name, ref.spec, folder, None)) from None
            if "does not recognize this architecture" in text or "Unrecognized model" in text:
                raise ModelLoadError(unknown_architecture_message(ref.name, ref.spec, folder)) from None
            raise
        except Exception as exc:
            message = remote_code_message(ref.name, ref.spec, folder, exc) if trust_remote_code else None
            if message is None:
                raise
            raise ModelLoadError(message) from None
        engine = cls(
            loaded.model,
            loaded.tokenizer,
            ref,
            loaded.quant,
            recipe=quantizer.recipe(),
            load_seconds=loaded.load_seconds,
            threads=threads,
            from_cache=loaded.from_cache,
            conversion=loaded.conversion,
            numerics=numerics,
            numerics_note=numerics_note,
        )
        # the content digest the cache key already computed, or computed now (memoized per machine)
        memo = cache.root if cache is not None else None
        engine.weights_id = weights_identity(ref, folder, memo, content=loaded.content)
        if decode in ("fast", "python"):
            engine.use_fast_decode(cache, native=decode == "fast")
        else:
            engine.facts.details["decode"] = "generate() (--llm-decode=generate)"
        return engine

    def _encode(self, prompt: str, system: str | None) -> dict[str, torch.Tensor]:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}
        ]
        if getattr(self.tokenizer, "chat_template", None):
            enc = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
        else:  # base models without a template: plain text
            text = (system + "\n\n" if system else "") + prompt
            enc = self.tokenizer(text, return_tensors="pt")
        return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    def generate(self, prompt: str, *, system: str | None, config: GenerationConfig) -> Answer:
        import torch

        torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        inputs = self._encode(prompt, system)
        prompt_len = int(inputs["input_ids"].shape[1])
        streamer = _first_token_streamer()
        sampling: dict[str, Any] = (
            {"do_sample": False}
            if config.greedy
            else {"do_sample": True, "temperature": config.temperature, "top_p": 1.0, "top_k": 0}
        )
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        start, start_cpu = time.perf_counter(), time.process_time()  # one span for wall and CPU
        with torch.inference_mode(), portable_arithmetic(self.numerics):
            if self.fast is not None and config.greedy:
                ids = self.fast.greedy(
                    inputs, config.max_new_tokens, set(self._stop_ids()), streamer.first_token
                )
                new = torch.tensor(ids, dtype=torch.long)
            else:
                with self.products() if self.products is not None else contextlib.nullcontext():
                    out = self.model.generate(
                        **inputs,
                        max_new_tokens=config.max_new_tokens,
                        streamer=streamer,
                        pad_token_id=pad,
                        **sampling,
                    )
                new = out[0, prompt_len:]
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
        stops = {t for t in (self.tokenizer.eos_token_id, pad, *self._stop_ids()) if t is not None}
        if new.shape[0] and int(new[-1]) in stops:  # the end-of-turn token is not part of the answer
            new = new[:-1]
        # A reply cut off at max_new_tokens can end inside a multi-byte character.
        text = self.tokenizer.decode(new, skip_special_tokens=True).strip().rstrip("\ufffd")
        ttft = (streamer.first - start) if streamer.first is not None else seconds
        return Answer(
            text=text,
            prompt=prompt,
            system=system,
            prompt_tokens=prompt_len,
            new_tokens=int(new.shape[0]),
            seconds=seconds,
            ttft=ttft,
            cpu_seconds=cpu_seconds,
        )

    def _stop_ids(self) -> list[int]:
        """The model's own stop ids (generation_config.json may list several, e.g. Qwen's
        ``<|im_end|>`` and ``<|endoftext|>``); generate() stops on all of them."""
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if eos is None:
            return []
        return [int(e) for e in eos] if isinstance(eos, (list, tuple)) else [int(eos)]

    def next_token_probs(
        self, prompt: str, *, system: str | None, candidates: Sequence[str]
    ) -> dict[str, float]:
        """Probability that the reply's first token is each candidate's first token (one
        forward pass, no sampling): what a ``judge:`` expectation reads."""
        import torch

        torch.set_num_threads(self.threads)
        inputs = self._encode(prompt, system)
        with torch.inference_mode(), portable_arithmetic(self.numerics):
            logits = self.model(**inputs).logits[0, -1].float()
        probs = torch.softmax(logits, dim=-1)
        out: dict[str, float] = {}
        for candidate in candidates:
            ids = self.tokenizer.encode(candidate, add_special_tokens=False)
            out[candidate] = float(probs[ids[0]]) if ids else 0.0
        return out

    def fingerprint(self) -> dict[str, Any]:
        if self._fingerprint is None:  # built once: every snapshot check asks for it
            self._fingerprint = {
                "engine": self.name,
                "source": self.ref.source,
                "model": self.ref.spec,
                "revision": self.ref.revision,
                "quantization": self.recipe,
                **self.numerics_identity(),
                "weights": self.weights_id,
                "versions": library_versions(),
            }
            if self.conversion:  # only converted models carry it: other fingerprints stay as they were
                self._fingerprint["conversion"] = dict(self.conversion)
        # not kept: use_fast_decode may decide again (the model's stop ids changed, a test)
        return {**self._fingerprint, "decode": self.decode_identity()}

    def numerics_identity(self) -> dict[str, Any]:
        """Portable answers name the recipe, not the CPU (they hold on every x86-64-v3 CPU);
        native ones name the CPU torch dispatches for, and snapshots compare them only there."""
        if self.numerics == PORTABLE:
            return {"numerics": recipe()}
        identity: dict[str, Any] = {"numerics": NATIVE, "cpu": cpu_capability()}
        if self.numerics_note:
            identity["numerics_note"] = self.numerics_note
        return identity

    def decode_identity(self) -> dict[str, Any]:
        """How greedy answers are decoded, for the fingerprint (sampled ones always use generate()).

        The fast loop and its C++ step are used only after their logits matched the model's
        forward bit for bit, but on one probe prompt: that is evidence, not proof, for every
        prompt. So the loop, the step and the bf16 ``lm_head``'s kernel (``mv`` or ``linear``,
        chosen by timing: different kernels, equal only as far as the probe shows) are
        recorded. An int4-a8 ``lm_head`` runs its one kernel in every path: nothing to record.
        Where the INT4 products run the C++ step's ``int4_mm`` (torch's AVX2 kernel's numbers),
        that is recorded too, and so is the lm_head screen (``argmax: screened``: the full lm_head's
        token by its bounds, and compared with it at load).
        """
        if self.fast is None:
            return {"loop": "generate", **({"int4": "int4_mm"} if self.products is not None else {})}
        decode: dict[str, Any] = {"loop": "fast", "step": "c++" if self.fast.native is not None else "python"}
        if self.fast.head is None:
            decode["lm_head"] = "mv" if self.fast.head_mv else "linear"
        if self.fast.native is not None and self.fast.native.int4_calls()[0]:
            decode["int4"] = "int4_mm"
        if self.fast.native is not None and self.fast.screen:
            decode["argmax"] = "screened"
        return decode

    def close(self) -> None:
        self.fast = None  # it holds the model too
        self.model = None
        self.tokenizer = None
        gc.collect()
