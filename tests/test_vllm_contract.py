"""The contract between mrt-ray and the official vLLM of the GPU profile, checked on CPU: every name mrt-ray passes
to or expects from vLLM exists in the source of the pinned wheel (`vllm==<pin>` of pyproject.toml's gpu extra), read
with `ast` (tests/wheel_source.py; never imported). A pin bump that breaks one fails naming the API.

The kwargs checked are the ones VLLMEngine really passes on GPU: it is built with `_is_cpu` patched off and
`vllm.LLM` replaced by a recorder (the installed CPU build of vLLM provides the rest of the module).

`MRT_VLLM_SRC=<dir>` points the tests at another unpacked tree (the last test uses it to break contracts on purpose).
"""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from wheel_source import REPO, Source, calls, class_names, fetch, params, pinned

from mrt_ray.config import load_config

VERSION = pinned("vllm")
OURS = {name: ast.parse((REPO / "mrt_ray" / "rollout" / f"{name}.py").read_text()) for name in ("vllm_engine",
                                                                                                 "vllm_ext")}
ENGINE_ARGS = "vllm.engine.arg_utils.EngineArgs"
WORKER = "vllm.v1.worker.gpu_worker.Worker"  # the CUDA platform's worker class (vllm/platforms/cuda.py)
MODEL_RUNNERS = ("vllm.v1.worker.gpu_model_runner.GPUModelRunner", "vllm.v1.worker.gpu.model_runner.GPUModelRunner")
LLM = "vllm.entrypoints.llm.LLM"
GPU_RUN = ["model=hf", "model.path=/models/x", "rollout.num_gpus=1", "learner.num_gpus=1",
           "rollout.enforce_eager=false", "rollout.gpu_memory_utilization=0.85"]


@pytest.fixture(scope="module")
def vllm_src() -> Source:
    return Source(Path(os.environ.get("MRT_VLLM_SRC") or fetch(VERSION)), f"vllm=={VERSION}")


def recorded_kwargs(monkeypatch, *overrides: str) -> dict:
    """The kwargs VLLMEngine gives `vllm.LLM` on a GPU machine, for the config `GPU_RUN + overrides`."""
    import vllm

    from mrt_ray.rollout import vllm_engine

    got = []

    class Recorder:
        def __init__(self, **kwargs):
            got.append(kwargs)

    monkeypatch.setattr(vllm_engine, "_is_cpu", lambda: False)
    monkeypatch.setattr(vllm, "LLM", Recorder)
    vllm_engine.VLLMEngine("/models/x", load_config(None, [*GPU_RUN, *overrides]), seed=7)
    return got[0]


# --------------------------------------------------------------------------- what VLLMEngine passes (no wheel needed)


def test_tensor_parallel_engine_runs_the_multiprocessing_executor_in_its_actor(monkeypatch):
    """TP>1 inside a placement group: vLLM alone picks its Ray executor, which refuses a bundle with more than one
    GPU; mrt-ray asks for the multiprocessing executor (the actor's bundle holds the engine's GPUs)."""
    tp2 = recorded_kwargs(monkeypatch, "rollout.tensor_parallel_size=2", "rollout.num_gpus=2")
    assert tp2["tensor_parallel_size"] == 2 and tp2["distributed_executor_backend"] == "mp"
    tp1 = recorded_kwargs(monkeypatch)
    assert tp1["tensor_parallel_size"] == 1 and tp1["distributed_executor_backend"] == "uni"
    # the GPU branch: vLLM sizes its own KV cache from the memory share; no CPU-only keys
    assert tp1["gpu_memory_utilization"] == 0.85 and "kv_cache_memory_bytes" not in tp1
    assert tp1["logprobs_mode"] == "processed_logprobs" and tp1["enforce_eager"] is False
    # one GPU shared by the learner and the engines: vLLM's memory profiling cannot run, the KV cache is explicit
    shared = recorded_kwargs(monkeypatch, "learner.num_gpus=0.4", "learner.num_ranks=1", "rollout.num_gpus=0.3",
                             "rollout.kv_cache_gib=4")
    assert shared["kv_cache_memory_bytes"] == 4 * 2**30 and shared["distributed_executor_backend"] == "uni"


# --------------------------------------------------------------------------- against the pinned wheel's source


@pytest.mark.network
def test_every_engine_kwarg_is_an_engine_args_field(vllm_src, monkeypatch):
    fields = vllm_src.fields(ENGINE_ARGS)
    for tp in (1, 2):
        kwargs = recorded_kwargs(monkeypatch, f"rollout.tensor_parallel_size={tp}", f"rollout.num_gpus={tp}")
        unknown = sorted(set(kwargs) - fields)
        if unknown:
            vllm_src.fail("EngineArgs", f"no field {unknown} (passed to vllm.LLM by mrt_ray/rollout/vllm_engine.py)")


@pytest.mark.network
@pytest.mark.parametrize(("kwarg", "alias"), [
    ("logprobs_mode", "vllm.config.model.LogprobsMode"),
    ("distributed_executor_backend", "vllm.config.parallel.DistributedExecutorBackend"),
    ("dtype", "vllm.config.model.ModelDType"),
])
def test_literal_engine_kwargs_are_allowed_values(vllm_src, monkeypatch, kwarg, alias):
    """`processed_logprobs` is a LogprobsMode; "mp"/"uni" are executor backends; every model.dtype is a ModelDType."""
    allowed = vllm_src.literal(alias)
    for overrides in ([], ["rollout.tensor_parallel_size=2", "rollout.num_gpus=2"], ["model.dtype=float32"],
                      ["model.dtype=float16"]):
        value = recorded_kwargs(monkeypatch, *overrides)[kwarg]
        if value not in allowed:
            vllm_src.fail(alias.rsplit(".", 1)[1], f"{kwarg}={value!r} is not one of {sorted(allowed)}")


@pytest.mark.network
def test_an_explicit_executor_backend_is_kept(vllm_src):
    """ParallelConfig chooses a backend (and "ray" inside a placement group) only when none was given."""
    _, node = vllm_src.cls("vllm.config.parallel.ParallelConfig")
    guarded = {id(sub) for n in ast.walk(node) if isinstance(n, ast.If)
               and "distributed_executor_backend is None" in ast.unparse(n.test)
               for stmt in n.body for sub in ast.walk(stmt)}
    writes = [n for n in ast.walk(node) if isinstance(n, ast.Assign)
              and any(ast.unparse(t) == "self.distributed_executor_backend" for t in n.targets)]
    for w in writes:
        if id(w) not in guarded:
            vllm_src.fail("ParallelConfig.distributed_executor_backend", f"set without an `is None` guard: "
                                                                         f"{ast.unparse(w)}")


@pytest.mark.network
def test_sampling_params_and_tokens_prompt_fields(vllm_src):
    fields = vllm_src.fields("vllm.sampling_params.SamplingParams")
    used = {k.arg for c in calls(OURS["vllm_engine"], "SamplingParams") for k in c.keywords if k.arg}
    if used - fields:
        vllm_src.fail("SamplingParams", f"no field {sorted(used - fields)}")
    prompt = vllm_src.fields("vllm.inputs.llm.TokensPrompt")
    used = {k.arg for c in calls(OURS["vllm_engine"], "TokensPrompt") for k in c.keywords if k.arg}
    if not used or used - prompt:
        vllm_src.fail("TokensPrompt", f"no field {sorted(used - prompt)}")
    if vllm_src.cls("vllm.v1.engine.exceptions.EngineDeadError")[1].name != "EngineDeadError":
        vllm_src.fail("EngineDeadError", "not in vllm.v1.engine.exceptions")


@pytest.mark.network
def test_reload_weights_signatures(vllm_src):
    """The extension calls `self.reload_weights(<keywords>)` on the worker, which hands them to its model runner
    (both runners: the default and model runner V2)."""
    used = {k.arg for c in calls(OURS["vllm_ext"], "reload_weights") for k in c.keywords if k.arg}
    assert used, "mrt_ray/rollout/vllm_ext.py no longer calls reload_weights"
    if vllm_src.method(WORKER, "reload_weights") is None:
        vllm_src.fail("Worker.reload_weights", "missing")
    for runner in MODEL_RUNNERS:
        fn = vllm_src.method(runner, "reload_weights")
        if fn is None:
            vllm_src.fail(f"{runner}.reload_weights", "missing")
        if used - set(params(fn)):
            vllm_src.fail(f"{runner}.reload_weights", f"no parameter {sorted(used - set(params(fn)))}; has "
                                                      f"{params(fn)}")


def _extension() -> ast.ClassDef:
    from mrt_ray.rollout.vllm_engine import EXTENSION

    module, name = EXTENSION.rsplit(".", 1)
    tree = ast.parse((REPO / Path(*module.split("."))).with_suffix(".py").read_text())
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)


@pytest.mark.network
def test_worker_extension_mixes_into_the_worker(vllm_src):
    """No name of the extension (methods, class attributes, `self.X` it sets) is one the worker already has (vLLM
    asserts this for class attributes only), and every `self.X` the extension reads but does not set is the
    worker's (e.g. rank, device, reload_weights)."""
    ext = _extension()
    ours, worker = class_names(ext), vllm_src.members(WORKER)
    clash = sorted(ours & worker)
    if clash:
        vllm_src.fail("Worker", f"already has {clash}, which mrt-ray's worker extension defines")
    read = {n.attr for n in ast.walk(ext) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
            and n.value.id == "self"}
    missing = sorted(read - ours - worker)
    if missing:
        vllm_src.fail("Worker", f"has no {missing}, which mrt-ray's worker extension reads")


@pytest.mark.network
def test_layerwise_reload_logger_and_message(vllm_src):
    """The extension filters vLLM's per-reload "RotaryEmbedding: Failed to load weights" warning by logger name and
    message prefix: both must still be what vLLM logs."""
    names = [c.args[0].value for c in calls(OURS["vllm_ext"], "getLogger")
             if c.args and isinstance(c.args[0], ast.Constant) and str(c.args[0].value).startswith("vllm.")]
    docs = {id(n.value) for n in ast.walk(OURS["vllm_ext"]) if isinstance(n, ast.Expr)}
    prefixes = [n.value for n in ast.walk(OURS["vllm_ext"]) if isinstance(n, ast.Constant) and id(n) not in docs
                and isinstance(n.value, str) and "Failed to load weights" in n.value]
    assert len(names) == 1 and len(prefixes) == 1, (names, prefixes)
    module = vllm_src.module(names[0])  # the logger is init_logger(__name__): its name is the module's
    if not any(isinstance(s, ast.Assign) and ast.unparse(s.value) == "init_logger(__name__)" for s in module.body):
        vllm_src.fail(names[0], "does not log through init_logger(__name__)")
    formats = [c.args[0].value for c in calls(module, "warning") if c.args and isinstance(c.args[0], ast.Constant)
               and "Failed to load weights" in str(c.args[0].value)]
    if [f % "RotaryEmbedding" for f in formats] != [prefixes[0]]:
        vllm_src.fail(names[0], f"logs {formats}, not {prefixes[0]!r} for the rotary cache")
    vllm_src.cls("vllm.model_executor.layers.rotary_embedding.base.RotaryEmbedding")


@pytest.mark.network
def test_llm_methods_mrt_ray_calls(vllm_src):
    """reset_prefix_cache() returns a bool (checked after every push); collective_rpc takes the method name first
    and the keywords mrt-ray passes; the engine's parallel config has world_size (the weight-group size)."""
    reset = vllm_src.method(LLM, "reset_prefix_cache")
    if reset is None or ast.unparse(reset.returns) != "bool":
        vllm_src.fail("LLM.reset_prefix_cache", "missing or not `-> bool`")
    if len(reset.args.args) - len(reset.args.defaults) > 1:
        vllm_src.fail("LLM.reset_prefix_cache", f"has required parameters: {params(reset)}")
    rpc = vllm_src.method(LLM, "collective_rpc")
    used = {k.arg for c in calls(OURS["vllm_engine"], "collective_rpc") for k in c.keywords if k.arg}
    if rpc is None or params(rpc)[:2] != ["self", "method"] or used - set(params(rpc)):
        vllm_src.fail("LLM.collective_rpc", f"signature {params(rpc) if rpc else None} does not take (method, "
                                            f"{sorted(used)})")
    if "world_size" not in vllm_src.fields("vllm.config.parallel.ParallelConfig"):
        vllm_src.fail("ParallelConfig.world_size", "missing")


def test_rpc_names_are_extension_methods():
    """Every method VLLMEngine reaches through collective_rpc is one the extension defines."""
    rpc = {c.args[0].value for c in calls(OURS["vllm_engine"], "collective_rpc") if isinstance(c.args[0], ast.Constant)}
    assert rpc and rpc <= class_names(_extension()), rpc


BREAKS = {  # file in the tree -> (text, replacement, the API the failure must name)
    "vllm/engine/arg_utils.py": ("    logprobs_mode: LogprobsMode", "    logprobs_kind: LogprobsMode",
                                 "EngineArgs: no field ['logprobs_mode']"),
    "vllm/config/model.py": ('"processed_logits", "processed_logprobs"\n]', '"processed_logits", "processed"\n]',
                             "LogprobsMode: logprobs_mode='processed_logprobs' is not one of"),
    "vllm/v1/worker/gpu/model_runner.py": ('is_checkpoint_format: bool = True,\n    ) -> None:\n        """Reload',
                                           'checkpoint_format: bool = True,\n    ) -> None:\n        """Reload',
                                           "vllm.v1.worker.gpu.model_runner.GPUModelRunner.reload_weights: no "
                                           "parameter ['is_checkpoint_format']"),
    "vllm/entrypoints/llm.py": ("reset_connector: bool = False\n    ) -> bool:",
                                "reset_connector: bool = False\n    ) -> None:",
                                "LLM.reset_prefix_cache: missing or not `-> bool`"),
    "vllm/model_executor/model_loader/reload/layerwise.py": ('"%s: Failed to load weights"',
                                                             '"%s: failed to load weights"',
                                                             "vllm.model_executor.model_loader.reload.layerwise: "
                                                             "logs [], not 'RotaryEmbedding: Failed to load weights'"),
    "vllm/v1/worker/worker_base.py": ("    def shutdown(self) -> None:",
                                      "    def mrt_receive_weights(self):\n        pass\n\n"
                                      "    def shutdown(self) -> None:",
                                      "Worker: already has ['mrt_receive_weights']"),
}


@pytest.mark.network
@pytest.mark.slow
def test_a_broken_contract_fails_naming_the_api(vllm_src, tmp_path):
    """The same tests against a copy of the wheel's tree with one API changed per file, as a pin bump could: each
    fails with a one-line message naming that API."""
    tree = tmp_path / "src"
    shutil.copytree(vllm_src.root, tree)
    for rel, (old, new, _) in BREAKS.items():
        text = (tree / rel).read_text()
        assert text.count(old) >= 1, (rel, old)
        (tree / rel).write_text(text.replace(old, new, 1))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "not broken",
                           __file__], cwd=REPO, env={**os.environ, "MRT_VLLM_SRC": str(tree)},
                          capture_output=True, text=True, timeout=900)
    out = re.sub(r"\s+", " ", proc.stdout)
    assert proc.returncode == 1, proc.stdout[-3000:]
    for _, _, message in BREAKS.values():
        assert f"vllm=={VERSION}: {message}" in out, (message, out[-3000:])
