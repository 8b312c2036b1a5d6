"""Served models (`mrt-ray eval model=LABEL:openai:URL`, mrt_ray/rollout/openai_engine.py and http.py).

Without a server: the arguments, a bad URL (one line, nothing written), and the client's retry rules against a small
HTTP endpoint built here. Against a REAL vLLM OpenAI server on 127.0.0.1 serving the tiny model (one per module,
with an API key it enforces): the endpoint gives exactly what in-process vLLM gives (token ids, text, log-probs, the
tokenizer's encode/decode/chat template, the whole eval.json), the key reaches no run file; requests that fail, are
answered slowly or lose their answer are retried into the same results, counted once; a persistently slow server
and a server killed mid-eval end the eval with one clear error.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mrt_ray.config import ConfigError, EndpointConfig, load_config
from mrt_ray.eval.plan import parse_eval_args
from mrt_ray.rollout.http import EndpointError, HTTPClient
from mrt_ray.rollout.types import Request, SamplingSpec
from mrt_ray.utils import free_port

KEY_ENV = "MRT_TEST_OPENAI_KEY"
KEY = "sk-mrt-test-5e1f0c9a7d3b42e8"  # the served model's API key: it must reach no run file
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


# ---- a small HTTP endpoint with chosen faults ----------------------------------------------------------------------

class FaultProxy:
    """An HTTP server on 127.0.0.1 that forwards to `upstream` (a server root; None: answers {"ok": true} itself) and
    breaks chosen attempts: `faults[(request index, attempt)]` (read from the request_id mrt-ray sends, or
    (None, n) for the n-th request without one) is "status:CODE" (answer CODE, Retry-After: 0), "drop" (forward,
    then close the connection unanswered: the server did the work, the answer is lost) or "hang:S" (answer nothing
    for S seconds, then close). `forwarded` counts what reached the upstream, per request index."""

    def __init__(self, upstream: str | None, faults: dict | None = None, every=None):
        import httpx

        self.upstream, self.faults, self.every = upstream, faults or {}, every
        self.forwarded: Counter = Counter()
        self.seen = 0
        proxy, upstream_http = self, httpx.Client(timeout=120)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                rid = (json.loads(raw) if raw else {}).get("request_id", "")
                m = re.search(r"-(\d+)\.(\d+)$", rid)
                with lock:
                    proxy.seen += 1
                    key = (int(m.group(1)), int(m.group(2))) if m else (None, proxy.seen)
                fault = proxy.every or proxy.faults.get(key, "")
                if fault.startswith("status:"):
                    body = json.dumps({"error": {"message": f"injected {fault}"}}).encode()
                    self.send_response(int(fault[7:]))
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if fault.startswith("hang:"):
                    time.sleep(float(fault[5:]))
                    self.close_connection = True
                    return
                if proxy.upstream is None:
                    status, body, ctype = 200, b'{"ok": true}', "application/json"
                else:
                    headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")}
                    r = upstream_http.request(self.command, proxy.upstream + self.path, content=raw, headers=headers)
                    status, body, ctype = r.status_code, r.content, r.headers.get("content-type", "")
                    with lock:
                        proxy.forwarded[key[0]] += 1
                if fault == "drop":
                    self.close_connection = True
                    return
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _handle

        lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---- no server -----------------------------------------------------------------------------------------------------

def test_served_model_arguments():
    a = parse_eval_args(["model=r1:openai:http://10.0.0.5:8000/v1/", "model=openai:http://h:1/v1", "model=/ckpt"])
    assert a.models == (("r1", "openai:http://10.0.0.5:8000/v1/"), ("http://h:1/v1", "openai:http://h:1/v1"),
                        ("/ckpt", "/ckpt"))
    for arg, match in [("model=a:openai:ftp://h/v1", "base URL"), ("model=a:openai:localhost:8000", "base URL"),
                       ("model=a:openai:http://u:pw@h/v1", "no credentials"), ("model=a:http://h:8000/v1", "openai:")]:
        with pytest.raises(ConfigError, match=match):
            parse_eval_args([arg])


def test_a_bad_url_is_one_line_and_writes_nothing(tmp_path, capsys):
    from mrt_ray.cli import main

    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    assert main(["eval", f"model=x:openai:{url}", f"run.dir={tmp_path}/run", "eval.endpoint.max_retries=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"mrt-ray: model=x: no OpenAI-compatible server answers at {url}")
    assert "Connection refused" in err and "failed after 1 attempt(s)" in err  # the probe is not retried
    assert not (tmp_path / "run").exists()


def test_client_retries_429_and_5xx_and_gives_up_clearly(capsys):
    ec = EndpointConfig(max_retries=3, backoff_s=0.01, api_key_env=KEY_ENV)
    proxy = FaultProxy(None, {(None, 1): "status:503", (None, 2): "status:429", (None, 3): "status:502"})
    client = HTTPClient(proxy.url, ec)
    try:
        assert client.post("completions", {"x": 1}) == {"ok": True}  # the 4th attempt passes
        assert (client.counts.requests, client.counts.attempts, client.counts.retries) == (1, 4, 3)
        assert "HTTP 503 injected status:503; retrying" in capsys.readouterr().out  # one notice line, not three
        proxy.every = "status:500"
        with pytest.raises(EndpointError, match=r"failed after 4 attempt\(s\): HTTP 500 injected status:500"):
            client.post("completions", {"x": 1})
        proxy.every, attempts = "status:400", client.counts.attempts
        with pytest.raises(EndpointError, match="was refused: HTTP 400 injected status:400"):
            client.post("completions", {"x": 1})
        assert client.counts.attempts == attempts + 1  # a bad request is not retried
        proxy.every = ""
        assert client.url("/tokenize") == proxy.url.removesuffix("/v1") + "/tokenize"  # server root endpoints
    finally:
        client.close()
        proxy.close()


# ---- a real vLLM OpenAI server ------------------------------------------------------------------------------------

class Served:
    def __init__(self, model: str, proc: subprocess.Popen, port: int, log: Path):
        self.model, self.proc, self.log = model, proc, log
        self.root = f"http://127.0.0.1:{port}"
        self.url = f"{self.root}/v1"


@pytest.fixture(scope="module")
def served(tiny_model, tmp_path_factory):
    """vLLM's OpenAI server (CPU build) on the tiny model, given a chat template, fp32 and eager like the in-process
    engine, log-probs after temperature like it, and an API key that it enforces."""
    import httpx
    from transformers import AutoTokenizer

    model = tmp_path_factory.mktemp("served") / "model"
    shutil.copytree(tiny_model, model)
    tok = AutoTokenizer.from_pretrained(model)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(model)
    port, log = free_port(), model.parent / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host", "127.0.0.1",
         "--port", str(port), "--dtype", "float32", "--max-model-len", "320", "--enforce-eager",
         "--logprobs-mode", "processed_logprobs", "--api-key", KEY],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    s = Served(str(model), proc, port, log)
    os.environ[KEY_ENV] = KEY
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the vLLM server exited ({proc.returncode}): {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{s.root}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the vLLM server did not start within 600 s"
            time.sleep(1)
        yield s
    finally:
        os.environ.pop(KEY_ENV, None)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _ec(**kw) -> EndpointConfig:
    return EndpointConfig(api_key_env=KEY_ENV, **kw)


def _requests(tok, n_prompts: int = 6) -> list[Request]:
    """Greedy and seeded sampled requests on embedded-task prompts."""
    prompts = [tok(f"{i}+{i + 3}-2=", add_special_tokens=False)["input_ids"] for i in range(n_prompts)]
    greedy = [Request(p, SamplingSpec(n=1, temperature=0.0, max_tokens=40)) for p in prompts]
    sampled = [Request(p, SamplingSpec(n=3, temperature=1.0, max_tokens=40, seed=100 + i))
               for i, p in enumerate(prompts)]
    return greedy + sampled


def _same(a, b) -> None:
    """Completions per request equal in ids, text, finished, and log-probs (to float noise)."""
    assert len(a) == len(b)
    for ga, gb in zip(a, b):
        assert [(c.ids, c.text, c.finished) for c in ga] == [(c.ids, c.text, c.finished) for c in gb]
        for ca, cb in zip(ga, gb):
            assert ca.logprobs == pytest.approx(cb.logprobs, abs=1e-5)


@pytest.mark.stack
@pytest.mark.slow
def test_the_endpoint_is_the_in_process_engine(served, ray_session, tmp_path, capfd):
    """Same requests, same completions; same tokenizer; and one eval of the model both ways gives one eval.json."""
    import ray

    from mrt_ray.eval.runner import EvalRunner
    from mrt_ray.models import load_tokenizer
    from mrt_ray.rollout.openai_engine import EndpointPool, OpenAIEngine, RemoteTokenizer
    from mrt_ray.rollout.pool import RolloutPool
    from mrt_ray.rollout.worker import RolloutWorker
    from mrt_ray.tasks.source import PromptSource

    cfg = load_config(None, [f"model.path={served.model}", "model.dtype=float32"])
    tok = load_tokenizer(served.model, cfg.model)
    with pytest.raises(EndpointError, match=f"wants an API key .*HTTP 401.*{KEY_ENV}_UNSET"):
        OpenAIEngine(served.url, EndpointConfig(api_key_env=f"{KEY_ENV}_UNSET"))  # the server enforces its key
    engine = OpenAIEngine(served.url, _ec())
    assert (engine.model, engine.max_model_len) == (served.model, 320)
    worker = ray.remote(RolloutWorker).options(num_cpus=0.5).remote(cfg, served.model, 0)
    try:
        reqs = _requests(tok)
        local, _ = RolloutPool([worker]).generate(reqs)
        remote, stats = EndpointPool(engine).generate(reqs)
        _same(local, remote)
        assert stats["tokens"] == sum(len(c.ids) for g in local for c in g)
    finally:
        ray.kill(worker)
    # the server's tokenizer: encode, decode with special tokens skipped (the random model writes <pad>/<unk>/<eos>
    # inside its completions), the chat template, and the prompts of a chat-templated data file
    remote_tok = RemoteTokenizer(engine)
    ids = [c.ids for g in local for c in g]
    assert any(t in seq for seq in ids for t in tok.all_special_ids)
    for seq in ids:
        for i in range(0, len(seq) + 1, 5):
            assert remote_tok.decode(seq[:i], skip_special_tokens=True) == tok.decode(seq[:i], skip_special_tokens=True)
    assert remote_tok.decode(ids[0]) == tok.decode(ids[0])
    messages = [{"role": "user", "content": "2+2="}]
    assert remote_tok.apply_chat_template(messages) == tok.apply_chat_template(messages, add_generation_prompt=True,
                                                                              tokenize=False)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i}+1=", "answer": str(i + 1)}) + "\n" for i in range(6)))
    chat = load_config(None, [*parse_eval_args([f"data={data}"]).overrides, "eval.size=3", "task.chat_template=true",
                              "rollout.max_new_tokens=32"])
    assert [p.prompt for p in PromptSource(chat, remote_tok).eval] == [p.prompt for p in PromptSource(chat, tok).eval]
    assert remote_tok("1+1=")["input_ids"] == tok("1+1=")["input_ids"]
    engine.close()

    # the whole eval, served and in-process, in one run (W&B offline writes its files into the run directory)
    budgets = [4, 8, 16, 40]
    cfg = load_config(None, [f"run.dir={tmp_path}/eval", "eval.size=3", "eval.n_samples=2", f"eval.budgets={budgets}",
                             "rollout.max_new_tokens=24", "progress.samples=2", "progress.round_size=2",
                             "model.max_model_len=320", "ray.num_cpus=4", f"eval.endpoint.api_key_env={KEY_ENV}",
                             "wandb.mode=offline"])
    EvalRunner(cfg, [("served", f"openai:{served.url}"), ("local", served.model)]).run()
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())["models"]
    ep = report["served"].pop("endpoint")
    assert ep["tokenizer"] == "server" and ep["served_model"] == served.model and ep["retries"] == 0
    for r in report.values():
        r.pop("path"), r.pop("seconds")
    assert report["served"] == report["local"]
    assert report["local"]["extensions"] > 0 and report["local"]["episodes"]["estimate_prefixes"] > 0
    # the key: in no run file (config, eval.json, W&B's offline files) and not on the console
    files = [p for p in (tmp_path / "eval").rglob("*") if p.is_file()]
    assert any("wandb" in str(p) for p in files)
    assert [p for p in files if KEY.encode() in p.read_bytes()] == []
    out, err = capfd.readouterr()
    assert KEY not in out + err


@pytest.mark.stack
def test_lost_refused_and_slow_answers_are_retried_into_the_same_results(served, tiny_model):
    """Each of these requests loses its first attempt in a different way; the batch still gives exactly the
    completions of an undisturbed run (placed by request, counted once), though the server generated some twice."""
    from mrt_ray.models import load_tokenizer
    from mrt_ray.rollout.openai_engine import OpenAIEngine

    tok = load_tokenizer(tiny_model, load_config(None, []).model)
    reqs = _requests(tok, 4)
    direct = OpenAIEngine(served.url, _ec())
    want = direct.generate(reqs, 0)
    direct.close()
    faults = {(1, 0): "status:503", (2, 0): "status:429", (4, 0): "drop", (5, 0): "hang:6", (6, 0): "drop",
              (6, 1): "status:500"}
    proxy = FaultProxy(served.root, faults)
    engine = OpenAIEngine(proxy.url, _ec(timeout_s=3.0, backoff_s=0.05, max_retries=3))
    try:
        got = engine.generate(reqs, 0)
        _same(want, got)
        n = engine.client.counts
        assert n.requests == len(reqs) + 1  # the requests, each answered once, and the probe of /v1/models
        assert n.retries >= len(faults) and n.attempts == n.requests + n.retries
        assert proxy.forwarded[4] == 2 and proxy.forwarded[6] == 2  # answered by the server, lost, generated again
    finally:
        engine.close()
        proxy.close()


@pytest.mark.stack
def test_a_server_that_stays_slow_is_one_clear_error(served, tiny_model):
    from mrt_ray.models import load_tokenizer
    from mrt_ray.rollout.openai_engine import OpenAIEngine

    proxy = FaultProxy(served.root)
    engine = OpenAIEngine(proxy.url, _ec(timeout_s=1.0, backoff_s=0.05, max_retries=1))
    proxy.every = "hang:3"
    try:
        tok = load_tokenizer(tiny_model, load_config(None, []).model)
        with pytest.raises(EndpointError, match=r"POST .*/v1/completions failed after 2 attempt\(s\): ReadTimeout"):
            engine.generate(_requests(tok, 2), 0)
    finally:
        engine.close()
        proxy.close()


@pytest.mark.stack
def test_a_server_killed_mid_eval_ends_it_with_one_clear_error(served, tmp_path):
    """Runs last: it kills the module's server once the eval has had 40 answers; the retries find nothing and the
    eval stops with one line, leaving no eval.json (nothing half-written)."""
    from mrt_ray.cli import _user_error
    from mrt_ray.eval.runner import EvalRunner

    cfg = load_config(None, [f"run.dir={tmp_path}/eval", "eval.size=3", "eval.n_samples=2", "eval.budgets=[4,40]",
                             "rollout.max_new_tokens=24", "progress.samples=2", "model.max_model_len=320",
                             f"eval.endpoint.api_key_env={KEY_ENV}", "eval.endpoint.backoff_s=0.1",
                             "eval.endpoint.max_retries=2", "wandb.mode=disabled"])
    runner = EvalRunner(cfg, [("served", f"openai:{served.url}")])
    counts = runner.endpoints["served"].client.counts

    def kill_after(n: int) -> None:
        while counts.requests < n and served.proc.poll() is None:
            time.sleep(0.01)
        os.killpg(served.proc.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_after, args=(40,), daemon=True)
    killer.start()
    with pytest.raises(EndpointError, match=r"failed after 3 attempt\(s\): (ConnectError|RemoteProtocolError|"
                                            r"ReadError)") as e:
        runner.run()
    killer.join()
    assert _user_error(e.value) and "\n" not in str(e.value)  # the CLI prints it as one line
    assert counts.requests >= 40
    assert (tmp_path / "eval" / "eval_config.yaml").is_file() and not (tmp_path / "eval" / "eval.json").exists()
