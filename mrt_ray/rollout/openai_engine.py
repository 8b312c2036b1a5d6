"""A served model as a rollout backend: any OpenAI-compatible `/v1/completions` endpoint that takes token-id prompts
and returns token ids (vLLM's OpenAI server; `mrt-ray eval model=LABEL:openai:http://HOST:PORT/v1`).

`OpenAIEngine` has the engine interface of `VLLMEngine` for sampling (generate(requests, version) -> completions with
token ids and log-probs), `EndpointPool` the interface of `RolloutPool`, so the eval plan runs unchanged against a
server. Both run in the driver: the HTTP client's threads carry the requests (`rollout.http`), nothing goes through
Ray, and the API key never leaves this process. Every request sends the prompt as token ids and asks for the
completion's token ids (`return_token_ids`), so budgets and lengths count the served model's own tokens exactly.
Log-probs are the server's (vLLM: `--logprobs-mode`, raw log-probs unless the server says otherwise).

`RemoteTokenizer` is the served model's tokenizer through vLLM's /tokenize and /detokenize, for when no local copy
is given (`eval.endpoint.tokenizer`): encode, decode (special tokens skipped as the HF tokenizer does) and chat
templates, each one request, decodes cached.
"""
from __future__ import annotations

import functools
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from mrt_ray.config import EndpointConfig
from mrt_ray.rollout.http import EndpointError, HTTPClient
from mrt_ray.rollout.pool import RolloutPool
from mrt_ray.rollout.types import Completion, Request

DECODE_CACHE = 4096  # decoded sequences kept (a trace's prefixes are decoded O(log n) times per boundary)


class OpenAIEngine:
    """Samples from the served model at `url` (its /v1 base). Opening it asks the server for its models once, without
    retries: a wrong URL or a server that is not up is one clear error at once."""

    def __init__(self, url: str, ec: EndpointConfig):
        self.url, self.ec = url, ec
        self.client = HTTPClient(url, ec)
        try:
            listing = self.client.request("GET", "models", retries=0)
        except EndpointError as e:
            self.client.close()
            if e.status in (401, 403):
                raise EndpointError(f"{url} wants an API key ({e}): put it in the environment variable "
                                    f"{ec.api_key_env or '(none named)'} (eval.endpoint.api_key_env)") from None
            raise EndpointError(f"no OpenAI-compatible server answers at {url} ({e}); check that the server is up "
                                f"and that the URL is its /v1 base, e.g. http://HOST:PORT/v1") from None
        cards = [c for c in (listing.get("data") if isinstance(listing, dict) else None) or [] if isinstance(c, dict)]
        ids = [c.get("id") for c in cards]
        if not cards or (ec.model and ec.model not in ids):
            self.client.close()
            want = f"eval.endpoint.model={ec.model!r}" if ec.model else "a model"
            raise EndpointError(f"{url} serves {ids or 'no models'}, not {want}")
        card = cards[ids.index(ec.model)] if ec.model else cards[0]
        self.model: str = card["id"]
        self.max_model_len: int | None = card.get("max_model_len")  # vLLM says; other servers may not
        self._batch = uuid.uuid4().hex[:8]  # request ids: mrt-<batch>-<call>-<index>.<attempt>
        self._calls = 0

    def _body(self, r: Request, rid: str) -> dict:
        s = r.spec
        body = {"model": self.model, "prompt": list(r.prompt_ids), "n": s.n, "temperature": s.temperature,
                "top_p": s.top_p, "max_tokens": s.max_tokens, "logprobs": 0, "return_token_ids": True,
                "return_tokens_as_token_ids": True, "request_id": rid}
        if s.seed is not None:
            body["seed"] = s.seed
        if s.stop:
            body["stop"] = list(s.stop)
        return body

    def generate(self, requests: list[Request], version: int) -> list[list[Completion]]:
        """One POST per request (its n samples together), up to eval.endpoint.max_concurrency at once; completions
        per request in request order."""
        self._calls += 1
        bodies = [self._body(r, f"mrt-{self._batch}-{self._calls}-{i}") for i, r in enumerate(requests)]
        answers = self.client.map(lambda b: self.client.post("completions", b), bodies)
        return [self._completions(a, r, version) for a, r in zip(answers, requests)]

    def _completions(self, answer: dict, r: Request, version: int) -> list[Completion]:
        choices = sorted(answer.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != r.spec.n:
            raise EndpointError(f"{self.url} answered {len(choices)} completions to a request for n={r.spec.n}")
        out = []
        for c in choices:
            ids = c.get("token_ids")
            if ids is None:
                raise EndpointError(f"{self.url} returns no completion token ids; exact token budgets need a server "
                                    f"that honours return_token_ids (vLLM >= 0.10.2)")
            lps = (c.get("logprobs") or {}).get("token_logprobs") or []
            out.append(Completion(ids=list(ids), logprobs=[float(x) for x in lps], text=c.get("text") or "",
                                  finished=c.get("finish_reason") == "stop", version=version))
        return out

    def info(self) -> dict:
        """What eval.json records about the endpoint (no key, no headers)."""
        n = self.client.counts
        return {"url": self.url, "served_model": self.model, "max_model_len": self.max_model_len,
                "requests": n.requests, "attempts": n.attempts, "retries": n.retries}

    def close(self) -> None:
        self.client.close()


class EndpointPool(RolloutPool):
    """`RolloutPool`'s interface over one `OpenAIEngine`: `submit` starts the requests in the background, `collect`
    waits for their completions (by request position) and raises the engine's error if one ended the batch."""

    def __init__(self, engine: OpenAIEngine):
        super().__init__([], "endpoint")
        self.engine = engine
        self._runner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mrt-endpoint")

    def submit(self, requests: list[Request], version: int | None = None) -> Future:
        return self._runner.submit(self._generate, requests)

    def _generate(self, requests: list[Request]) -> tuple[list[list[Completion]], dict]:
        t = time.perf_counter()
        out = self.engine.generate(requests, 0)
        return out, {"seconds": time.perf_counter() - t, "tokens": sum(len(c.ids) for g in out for c in g)}

    def collect(self, pending: Future) -> tuple[list[list[Completion]], dict]:
        return pending.result()

    def close(self) -> None:
        self._runner.shutdown(wait=True)


class RemoteTokenizer:
    """The served model's tokenizer over HTTP, with the calls mrt-ray makes of an HF tokenizer: tok(text,
    add_special_tokens=...)["input_ids"], encode, decode and apply_chat_template.

    decode(ids, skip_special_tokens=True) drops the special tokens before /detokenize (which keeps them). Whether a
    token is special is asked of the server once per distinct token: a one-token completion forced onto it
    (`allowed_token_ids`) is decoded with special tokens skipped, so a special token yields no text although
    /detokenize spells it (a partial UTF-8 byte yields none either, but /detokenize gives only U+FFFD for it).
    """

    chat_template = "(the server's)"  # present: the server applies its own template, or says it has none

    def __init__(self, engine: OpenAIEngine):
        self.client, self.model = engine.client, engine.model
        self._special: dict[int, bool] = {}
        self._lock = threading.Lock()
        self._detokenize = functools.lru_cache(maxsize=DECODE_CACHE)(self._detokenize_uncached)

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text, add_special_tokens=add_special_tokens)}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        body = {"model": self.model, "prompt": text, "add_special_tokens": add_special_tokens}
        return list(self.client.post("/tokenize", body)["tokens"])

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        ids = [int(t) for t in ids]
        if skip_special_tokens:
            self._learn(ids)
            ids = [t for t in ids if not self._special[t]]
        return self._detokenize(tuple(ids))

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            tokenize: bool = False):
        body = {"model": self.model, "messages": messages, "add_generation_prompt": add_generation_prompt}
        ids = list(self.client.post("/tokenize", body)["tokens"])
        return ids if tokenize else self.decode(ids)

    def _detokenize_uncached(self, ids: tuple[int, ...]) -> str:
        return self.client.post("/detokenize", {"model": self.model, "tokens": list(ids)})["prompt"] if ids else ""

    def _learn(self, ids: list[int]) -> None:
        with self._lock:
            unknown = sorted(set(ids) - self._special.keys())
        if unknown:
            found = dict(zip(unknown, self.client.map(self._is_special, unknown)))
            with self._lock:
                self._special.update(found)

    def _is_special(self, token: int) -> bool:
        forced = self.client.post("completions", {
            "model": self.model, "prompt": [token], "max_tokens": 1, "temperature": 0.0,
            "allowed_token_ids": [token], "skip_special_tokens": True})["choices"][0]["text"]
        return forced == "" and self._detokenize((token,)).strip("\ufffd") != ""
