"""The ITREX worker: loads one model with ITREX INT4 and answers prompts, in the ITREX env.

Runs inside the pinned environment (torch 2.3.1, transformers 4.40.2, ITREX 1.4.2), so
it imports only the standard library and that stack, never ``pytest_llmcheck``. The
launcher (``engine.py``) starts it once per model and talks JSON lines:

- requests on stdin: ``{"id": n, "op": "load" | "generate" | "shutdown", ...}``;
- replies on the original stdout (a private copy of fd 1): ``{"id": n, "ok": true, ...}``
  or ``{"id": n, "ok": false, "error": "one line", "traceback": "..."}``. File
  descriptor 1 itself is pointed at stderr, so whatever ITREX, neural-compressor or a C
  library prints can never corrupt the protocol; stderr goes to the launcher's log file.

It never outlives the launcher: it asks the kernel for SIGKILL when its parent dies
(``PR_SET_PDEATHSIG``), and a thread watches a lifeline pipe whose write end only the
launcher holds; end of file there (the launcher exited, however) ends the worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any

FAULT_ENV = "LLMCHECK_ITREX_FAULT"  # tests only: crash | raise | hang, on the first generate
DEFAULT_QWEN_SYSTEM = "You are a helpful assistant."  # Qwen's own chat() default
RECIPE_FILE = "llmcheck-recipe.json"  # beside saved INT4 weights: the recipe ITREX settled on


def _die_with_parent(parent: int, lifeline: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except Exception:  # the lifeline below still holds
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(3)

    def watch() -> None:
        try:
            while os.read(lifeline, 1):
                pass
        except OSError:
            pass
        os._exit(3)

    threading.Thread(target=watch, name="lifeline", daemon=True).start()


class Worker:
    def __init__(self) -> None:
        self.model: Any = None
        self.tokenizer: Any = None
        self.chat_mode = "template"
        self.model_type = ""
        self.quant = "int4"
        self.generations = 0

    # -- load

    def load(self, req: dict[str, Any]) -> dict[str, Any]:
        import torch

        threads = int(req.get("threads", 1))
        self._threads(threads)
        path = req["path"]
        trust = bool(req.get("trust_remote_code", False))
        self.quant = req.get("quant", "int4")
        from transformers import AutoConfig, AutoTokenizer

        config = AutoConfig.from_pretrained(path, trust_remote_code=trust)
        self.model_type = str(getattr(config, "model_type", ""))
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
        start = time.perf_counter()
        details: dict[str, Any] = {}
        if self.quant == "none":
            from transformers import AutoModelForCausalLM

            self.model = AutoModelForCausalLM.from_pretrained(
                path, torch_dtype=torch.float32, trust_remote_code=trust
            )
        elif self.quant == "int4" and req.get("saved"):
            # INT4 weights saved by an earlier session (ITREX's save_low_bit): no quantizing
            from intel_extension_for_transformers.transformers import AutoModelForCausalLM as ItrexAuto

            saved = req["saved"]
            with open(os.path.join(saved, RECIPE_FILE), encoding="utf-8") as fh:
                details = json.load(fh)
            self.model = None  # a model loaded before (the one that was saved) goes first:
            import gc  # ITREX's models sit in reference cycles, so only a collection frees them

            gc.collect()
            self.model = ItrexAuto.from_pretrained(saved, use_neural_speed=False, trust_remote_code=trust)
        elif self.quant == "int4":
            from intel_extension_for_transformers.transformers import AutoModelForCausalLM as ItrexAuto
            from intel_extension_for_transformers.transformers import RtnConfig

            recipe = req.get("recipe") or {"bits": 4, "compute_dtype": "int8"}  # set by the launcher
            qconfig = RtnConfig(bits=int(recipe["bits"]), compute_dtype=str(recipe["compute_dtype"]))
            fields = ("bits", "weight_dtype", "compute_dtype", "scale_dtype", "group_size", "scheme")
            details = {"algorithm": "rtn", **{f: getattr(qconfig, f, None) for f in fields}}
            self.model = ItrexAuto.from_pretrained(
                path, quantization_config=qconfig, use_neural_speed=False, trust_remote_code=trust
            )
            # ITREX settles the defaults (weight_dtype int4_clip, scale fp32) while loading and
            # then drops some attributes: keep what it settled on, and what it dropped.
            details.update({f: getattr(qconfig, f) for f in fields if getattr(qconfig, f, None) is not None})
        else:
            raise ValueError(f"unknown quant {self.quant!r}; allowed: int4, none")
        self.model.eval()
        seconds = time.perf_counter() - start
        total, converted = self._count()
        if self.quant == "int4" and converted == 0:
            raise RuntimeError(
                f"ITREX converted 0 of {total} linear layers (lm_head excluded) to INT4; its weight-only "
                f"path does not fit this model ({type(self.model).__name__})"
            )
        if self.quant == "int4" and req.get("save_to"):
            # for the launcher's cache: saving converts the layers back to ITREX's public
            # format, so the launcher loads the saved copy next (op "load" with "saved")
            save_to = req["save_to"]
            self.model.save_pretrained(save_to)
            with open(os.path.join(save_to, RECIPE_FILE), "w", encoding="utf-8") as fh:
                json.dump(details, fh)
        chat = req.get("chat", "auto")
        has_chat = callable(getattr(self.model, "chat", None)) and trust
        if chat == "auto":
            self.chat_mode = "chat" if has_chat else "template" if self.tokenizer.chat_template else "plain"
        else:
            self.chat_mode = chat
        return {
            "seconds": seconds,
            "layers_total": total,
            "layers_converted": converted,
            "weight_bytes": self._weight_bytes(),
            "model_class": type(self.model).__name__,
            "model_type": self.model_type,
            "chat_mode": self.chat_mode,
            "recipe": details,
        }

    def _threads(self, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        if self.quant == "int4":
            from intel_extension_for_transformers import qbits

            qbits.set_qbits_threads(threads)

    def _count(self) -> tuple[int, int]:
        import torch

        total = converted = 0
        skip = ("lm_head", "output_layer", "embed_out")  # ITREX keeps these in fp32 by design
        for name, module in self.model.named_modules():
            if isinstance(module, torch.nn.Linear) and not name.endswith(skip):
                total += 1
                converted += type(module).__name__ == "QuantizedLinearQBits"
        return total, converted

    def _weight_bytes(self) -> int:
        return sum(int(p.numel() * p.element_size()) for p in self.model.parameters())

    # -- generate

    def generate(self, req: dict[str, Any]) -> dict[str, Any]:
        import torch

        fault = os.environ.get(FAULT_ENV, "")
        if fault and self.generations == int(os.environ.get(FAULT_ENV + "_AFTER", "0")):
            self._fault(fault)
        self.generations += 1
        self._threads(int(req.get("threads", 1)))
        torch.manual_seed(int(req.get("seed", 0)))
        temperature = float(req.get("temperature", 0.0))
        # chat() code passes its own sampling defaults (top_p, temperature); greedy ignores them
        sampling: dict[str, Any] = (
            {"do_sample": False}
            if temperature <= 0
            else {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0}
        )
        streamer = _Streamer()
        prompt, system = req["prompt"], req.get("system")
        max_new = int(req["max_new_tokens"])
        start, start_cpu = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            if self.chat_mode == "chat":
                text = self._chat(prompt, system, max_new, sampling, streamer)
                new_ids = list(streamer.new_ids)
            else:
                ids = self._encode(prompt, system)
                out = self.model.generate(
                    ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, streamer=streamer,
                    pad_token_id=self._pad(), **sampling,
                )
                new_ids = [int(t) for t in out[0, ids.shape[1]:]]
                text = ""
        if new_ids and new_ids[-1] in self._stops():  # the end-of-turn token is not part of the answer
            new_ids = new_ids[:-1]
        if self.chat_mode != "chat":
            text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
        ttft = (streamer.first - start) if streamer.first is not None else seconds
        return {
            "text": text.strip().rstrip("\ufffd"),
            "prompt_tokens": streamer.prompt_tokens,
            "new_tokens": len(new_ids),
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,  # the worker's, which computes; pytest's process only waits
            "ttft": ttft,
            "ids": new_ids if req.get("return_ids") else None,
        }

    def _pad(self) -> int | None:
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        return None if pad is None else int(pad)

    def _stops(self) -> set[int]:
        stops = {t for t in (self.tokenizer.eos_token_id, self._pad()) if t is not None}
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        stops.update([eos] if isinstance(eos, int) else list(eos or []))
        return stops

    def _encode(self, prompt: str, system: str | None) -> Any:
        import torch

        if self.chat_mode == "template":
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": prompt}
            ]
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        else:  # base models without a template: plain text
            ids = self.tokenizer((system + "\n\n" if system else "") + prompt)["input_ids"]
        return torch.tensor([ids], dtype=torch.long)

    def _chat(
        self, prompt: str, system: str | None, max_new: int, sampling: dict[str, Any], streamer: Any
    ) -> str:
        """The model's own ``chat()``, as ITREX's ``build_chatbot`` and the seed study used it."""
        kwargs: dict[str, Any] = {"max_new_tokens": max_new, "streamer": streamer, **sampling}
        if self.model_type == "qwen":  # Qwen-7B-Chat: chat(tokenizer, query, history, system=...)
            response, _ = self.model.chat(
                self.tokenizer, prompt, history=None, system=system or DEFAULT_QWEN_SYSTEM, **kwargs
            )
        elif self.model_type == "chatglm":  # ChatGLM3: a system turn goes into the history
            history = [{"role": "system", "content": system}] if system else []
            response, _ = self.model.chat(self.tokenizer, prompt, history=history, **kwargs)
        else:
            response, _ = self.model.chat(self.tokenizer, prompt, history=[], **kwargs)
        return str(response)

    def _fault(self, fault: str) -> None:
        if fault == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        if fault == "raise":
            raise RuntimeError("injected fault for a test")
        if fault == "hang":
            time.sleep(3600)


class _Streamer:
    """Notes the prompt length, the time of the first new token and the new token ids."""

    def __init__(self) -> None:
        self.calls = 0
        self.first: float | None = None
        self.prompt_tokens = 0
        self.new_ids: list[int] = []

    def put(self, value: Any) -> None:
        self.calls += 1
        flat = [int(v) for v in value.reshape(-1).tolist()]
        if self.calls == 1:  # the prompt
            self.prompt_tokens = len(flat)
            return
        if self.first is None:
            self.first = time.perf_counter()
        self.new_ids.extend(flat)

    def end(self) -> None:
        pass


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": ".".join(map(str, sys.version_info[:3]))}
    for dist in ("torch", "transformers", "intel-extension-for-transformers", "neural-compressor"):
        with contextlib.suppress(PackageNotFoundError):
            out[dist] = version(dist)
    return out


def main(argv: list[str]) -> int:
    args = dict(zip(argv[1::2], argv[2::2], strict=False))
    _die_with_parent(int(args["--parent"]), int(args["--lifeline"]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the launcher's to handle
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)  # library prints (C or Python) land in the log, not in the protocol
    sys.stdout = sys.stderr
    # requests come on a private copy of fd 0 too: ITREX answers some load errors with the
    # builtin exit(), which closes sys.stdin before raising SystemExit
    requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
    sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115  # for the worker's lifetime

    def reply(message: dict[str, Any]) -> None:
        replies.write(json.dumps(message, ensure_ascii=False) + "\n")
        replies.flush()

    worker = Worker()
    reply({"event": "ready", "pid": os.getpid(), "versions": _versions()})
    for line in requests:
        if not line.strip():
            continue
        req = json.loads(line)
        op = req.get("op")
        if op == "shutdown":
            reply({"id": req.get("id"), "ok": True})
            break
        try:
            if op == "load":
                result = worker.load(req)
            elif op == "generate":
                result = worker.generate(req)
            else:
                raise ValueError(f"unknown op {op!r}")
            reply({"id": req.get("id"), "ok": True, **result})
        except BaseException as exc:  # SystemExit too: ITREX calls exit() on some errors
            text = str(exc).strip().splitlines()
            reply({
                "id": req.get("id"),
                "ok": False,
                "error": f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": "),
                "traceback": traceback.format_exc(),
            })
            if isinstance(exc, KeyboardInterrupt):
                break
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
