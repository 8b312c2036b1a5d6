"""The Ray edge: start or join a cluster, reserve resources in one placement group, and turn the plain classes
(Learner, RolloutWorker) into actors. Nothing else in mrt-ray calls Ray's actor API.

Every actor writes its output to the run's logs/<role>-<index>.log (quiet console, mrt_ray/console.py) and an
exception in any of its methods carries a one-line note naming the actor, the method and that log."""
from __future__ import annotations

import functools
import inspect
import logging
import os
import secrets
import socket
import time
from pathlib import Path

import ray
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from mrt_ray import console
from mrt_ray.config import Config
from mrt_ray.utils import free_port

log = logging.getLogger("mrt_ray")
ROLE_NAMES = {"learner": "learner rank", "rollout": "rollout worker", "estimator": "estimator worker"}


def init_ray(cfg: Config) -> None:
    """Join `ray.address` / RAY_ADDRESS when given (e.g. under `ray job submit`), else start a local cluster whose
    dashboard listens on 127.0.0.1 only, with token authentication (`private_auth_token`)."""
    if ray.is_initialized():
        return
    env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", "VLLM_LOGGING_LEVEL": "WARNING"}}
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS", "")
    to_driver = not console.quiet()  # quiet: each actor writes its own log file instead
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=to_driver)
    else:
        private_auth_token()
        port = cfg.ray.dashboard_port
        for attempt in range(3):
            if not _port_free(port):  # another local Ray (or anything else) holds it: take a free one, say which
                port = free_port()
                log.warning("dashboard port %s is taken; using 127.0.0.1:%s", cfg.ray.dashboard_port, port)
            try:
                ray.init(num_cpus=cfg.ray.num_cpus or None, include_dashboard=True, dashboard_host="127.0.0.1",
                         dashboard_port=port, runtime_env=env, log_to_driver=to_driver)
                return
            except Exception as e:  # noqa: BLE001 - a concurrent run took the port between the check and the bind
                ray.shutdown()
                if "dashboard" not in str(e) or attempt == 2:
                    raise
                port = free_port()


def private_auth_token() -> None:
    """The token of a local cluster with token authentication (RAY_AUTH_MODE=token, which `mrt-ray` sets for a local
    run before Ray is imported: Ray reads it once, at import, so it cannot be switched on here). The token is the
    file ~/.ray/auth_token unless RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH name another; Ray writes that file readable by
    every local user (mode 0644), which would let any of them drive the cluster, so it is created, or narrowed, to
    0600."""
    if os.environ.get("RAY_AUTH_MODE") != "token" or os.environ.get("RAY_AUTH_TOKEN") or \
            os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    path = Path.home() / ".ray" / "auth_token"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # created private, in one step, the way Ray makes its tokens (256 random bits, hex)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        return
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


ROLE_NODES = {"learner": "learner", "rollout": "rollout", "estimator": "rollout"}  # role -> node-label value


def learner_ranks(cfg: Config, with_estimators: bool, resources: dict[str, float]) -> int:
    """`learner.num_ranks=0` (the default), derived from the cluster's resources as Ray reports them: learners on
    whole GPUs get one rank per GPU the rollout (and estimator) workers leave free; learners on a GPU share or on CPU
    get one rank (NCCL refuses two ranks on one GPU; on CPU a second rank holds a second copy of the model and
    all-reduces its gradients, while `learner.threads=0` gives the one rank the node's cores: 0.88x and 1.00x the
    step of two one-thread ranks on 2 cores in two side-by-side runs, section 11 of docs/performance.md).
    A set number is kept."""
    lc = cfg.learner
    if lc.num_ranks:
        return lc.num_ranks
    if lc.num_gpus < 1:
        return 1
    taken = cfg.rollout.num_workers * cfg.rollout.num_gpus
    if with_estimators:
        taken += cfg.progress.num_workers * cfg.progress.num_gpus
    free = resources.get("GPU", 0.0) - taken
    if free < lc.num_gpus:
        raise RuntimeError(f"learner.num_ranks=0 derives the learner ranks from the free GPUs, but the cluster has "
                           f"{resources.get('GPU', 0.0):g} GPUs and the workers take {taken:g}: set learner.num_ranks "
                           f"or add GPU nodes")
    return int(free // lc.num_gpus)


def bundles(cfg: Config, with_estimators: bool) -> dict[str, list[dict]]:
    """Resource bundles per role, straight from config (CPUs and GPUs per actor)."""
    def b(cpus, gpus):
        d = {"CPU": cpus}
        if gpus:
            d["GPU"] = gpus
        return d

    out = {
        "learner": [b(cfg.learner.num_cpus, cfg.learner.num_gpus) for _ in range(cfg.learner.num_ranks)],
        "rollout": [b(cfg.rollout.num_cpus, cfg.rollout.num_gpus) for _ in range(cfg.rollout.num_workers)],
    }
    if with_estimators:
        out["estimator"] = [b(cfg.progress.num_cpus, cfg.progress.num_gpus) for _ in range(cfg.progress.num_workers)]
    return out


def shares_gpus(roles: dict[str, list[dict]]) -> bool:
    """Whether Ray may put two of these bundles' actors on one GPU (a fractional GPU share)."""
    return any(0 < b.get("GPU", 0) < 1 for bs in roles.values() for b in bs)


def weight_backend(roles: dict[str, list[dict]]) -> str:
    """The weight group's backend for these bundles: NCCL when the learners are on GPUs and no two actors share one
    (NCCL refuses two ranks of one communicator on one GPU: "Duplicate GPU detected"), else gloo (on GPU: staged
    through host memory, as torch's gloo broadcast does for CUDA tensors)."""
    on_gpu = bool(roles.get("learner")) and all(b.get("GPU", 0) for b in roles["learner"])
    return "nccl" if on_gpu and not shares_gpus(roles) else "gloo"


class Placement:
    """One placement group holding every actor's bundle; `strategy(role, i)` schedules an actor onto its bundle.

    With `ray.role_label` set (e.g. `mrt-role`, the label of the KubeRay groups in cluster/), every bundle carries a
    label selector: learner bundles go to nodes labelled `<key>=learner`, rollout and estimator bundles (vLLM engines)
    to nodes labelled `<key>=rollout`. Without it, PACK may put any bundle on any node with room."""

    def __init__(self, cfg: Config, with_estimators: bool, roles: tuple[str, ...] | None = None):
        """`roles`: reserve only these roles' bundles (e.g. ("rollout",) for evaluation); None: all of them.
        `learner.num_ranks=0` is resolved here (`learner_ranks`), and `cfg` updated, before anything is reserved."""
        if not cfg.learner.num_ranks and (roles is None or "learner" in roles):
            cfg.learner.num_ranks = learner_ranks(cfg, with_estimators, ray.cluster_resources())
        self.roles = bundles(cfg, with_estimators)
        if roles is not None:
            unknown = set(roles) - set(self.roles)
            if unknown:
                raise ValueError(f"Placement: unknown roles {sorted(unknown)}; choose from {sorted(self.roles)}")
            self.roles = {r: b for r, b in self.roles.items() if r in roles}
        flat, self.offset = [], {}
        for role, bs in self.roles.items():
            self.offset[role] = len(flat)
            flat.extend(bs)
        key = cfg.ray.role_label
        selectors = [{key: ROLE_NODES[role]} for role, bs in self.roles.items() for _ in bs] if key else None
        self.run_dir = cfg.run.dir
        log.info("starting %s on Ray", ", ".join(f"{len(bs)} {ROLE_NAMES.get(r, r)}{'s' * (len(bs) != 1)}"
                                                  for r, bs in self.roles.items()))
        self.pg = placement_group(flat, strategy="PACK", bundle_label_selector=selectors)
        ready, _ = ray.wait([self.pg.ready()], timeout=cfg.ray.placement_timeout_s)
        if not ready:
            total = ray.cluster_resources()
            where = (f" on nodes labelled {sorted({f'{key}={ROLE_NODES[r]}' for r in self.roles})} (ray.role_label)"
                     if key else "")
            raise RuntimeError(
                f"could not reserve {flat}{where} within ray.placement_timeout_s={cfg.ray.placement_timeout_s}s; the "
                f"cluster has {total}. Lower the actors' num_cpus/num_gpus or add nodes."
            )

    def strategy(self, role: str, i: int) -> PlacementGroupSchedulingStrategy:
        return PlacementGroupSchedulingStrategy(placement_group=self.pg,
                                                placement_group_bundle_index=self.offset[role] + i)

    def actor(self, cls, role: str, i: int, *args, threads: int = 1, max_restarts: int = 0, env: dict | None = None):
        bundle = self.roles[role][i]
        env_vars = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), **(env or {}),
                    console.ACTOR_ENV: f"{ROLE_NAMES.get(role, role)} {i}",
                    console.ACTOR_LOG_ENV: console.actor_log(self.run_dir, role, i) if self.run_dir else ""}
        return ray.remote(logged(cls)).options(
            num_cpus=bundle["CPU"], num_gpus=bundle.get("GPU", 0), scheduling_strategy=self.strategy(role, i),
            max_restarts=max_restarts, max_task_retries=0, runtime_env={"env_vars": env_vars},
        ).remote(*args)

    def remove(self) -> None:
        """Free the reserved bundles (kill the actors on them first)."""
        ray.util.remove_placement_group(self.pg)

    def node_ip(self, role: str, i: int) -> str:
        """IP of the node holding bundle (role, i) (where a rendezvous store of that actor listens)."""
        return ray.get(_node_ip.options(num_cpus=0, scheduling_strategy=self.strategy(role, i)).remote())


_LOGGED: dict[type, type] = {}


def logged(cls: type) -> type:
    """`cls` as an actor class: its process's output goes to its log file (`console.redirect_actor_output`) and an
    exception in __init__ ("start") or a public method gets the note the driver prints (`console.note_failure`)."""
    if cls not in _LOGGED:
        def guard(fn, name: str):
            @functools.wraps(fn)
            def call(self, *args, **kwargs):
                try:
                    return fn(self, *args, **kwargs)
                except Exception as e:
                    console.note_failure(e, name)
                    raise
            return call

        def init(self, *args, **kwargs):
            console.redirect_actor_output()
            guard(cls.__init__, "start")(self, *args, **kwargs)

        methods = {name: guard(fn, name) for name, fn in inspect.getmembers(cls, inspect.isfunction)
                   if not name.startswith("_") and not isinstance(inspect.getattr_static(cls, name), staticmethod)}
        _LOGGED[cls] = type(cls.__name__, (cls,), {**methods, "__init__": init, "__doc__": cls.__doc__,
                                                   "__module__": cls.__module__, "__qualname__": cls.__qualname__})
    return _LOGGED[cls]


def wait_ready(actor, name: str, timeout_s: float, key: str) -> dict:
    """`actor.ready()`, waiting while the actor starts or Ray restarts it (calls to a restarting actor fail at once
    with ActorUnavailableError, since max_task_retries=0; a call the actor was killed in the middle of fails with
    RayActorError although Ray restarts it, so that one counts only when the GCS says the actor is DEAD). An actor out
    of restarts, or not up within `timeout_s` (the config key `key`), is an error naming it."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ray.get(actor.ready.remote(), timeout=max(1.0, deadline - time.monotonic()))
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not come back from a restart within {key}={timeout_s:g}s") from None
            time.sleep(0.5)
        except ray.exceptions.RayActorError as e:
            state, restarts = actor_state(actor)
            if state in ("DEAD", None) or time.monotonic() > deadline:
                raise RuntimeError(f"{name} died and Ray did not restart it (GCS state {state or 'unknown'} after "
                                   f"{restarts} restarts: its max_restarts are used up, or Ray gave up on it): {e}") \
                    from e
            time.sleep(0.5)  # killed during this call, and Ray is restarting it
        except ray.exceptions.GetTimeoutError:
            raise RuntimeError(f"{name} did not start within {key}={timeout_s:g}s") from None


def actor_state(actor) -> tuple[str | None, int | None]:
    """The GCS's state of `actor` ("ALIVE", "RESTARTING", "DEAD", ...) and its restart count; None when Ray cannot
    say. Read straight from the GCS (Ray's own state table; the public `ray.util.state` needs the dashboard, which a
    cluster may not run)."""
    try:
        from ray._private.state import state

        info = state.actor_table(actor._actor_id.hex())
    except Exception:  # noqa: BLE001 - an unknown state counts as dead (the caller's error then names the actor)
        return None, None
    return (info.get("State"), info.get("NumRestarts")) if info else (None, None)


def stop(actors: list) -> None:
    """End actors now (no restart): their bundles are free for the next actors."""
    for a in actors:
        ray.kill(a, no_restart=True)


@ray.remote
def _node_ip() -> str:
    return ray.util.get_node_ip_address()
