"""trainer_node: SMILING (or the DAC/BC baselines) inside a ROS 2 node.

    trainer_node --ros-args -p config:=arm_reach -p dataset:=runs/demos_ds -p out_dir:=runs/smiling
    trainer_node --ros-args -p config:=arm_reach -p dataset:=runs/demos_ds -p backend:=ros   # + sim_node lockstep
    trainer_node --ros-args ... -p resume:=true        # continue out_dir after a crash or a stop
    trainer_node --ros-args ... -p n_envs:=4           # mujoco backend: 4 simulator copies

The same trainer as ``smiling-ros train-smiling`` (:func:`smiling_ros.methods.smiling.trainer.train`),
run on a worker thread, so the run directory, logs (train.csv, eval.csv, learning_curve.png)
and checkpoints are the same. Backends:

- ``mujoco``: the config's task stepped in-process, ``n_envs`` copies (parameter, else the
  config's ``smiling.n_envs``) in one vectorised env; step counts stay in env steps over all copies.
- ``ros``: :class:`smiling_ros.ros.env.RosRobotEnv` steps a robot over topics (observation
  fields of the config, commands on ``topics.command``, resets through ``reset_service``), e.g.
  ``sim_node --ros-args -p mode:=lockstep``. Periodic evaluation then runs on the task
  in-process when the config names one (never on the robot: it would cut training episodes);
  without one (a real robot) there is no evaluation. One robot is one env: the config's
  ``smiling.n_envs`` is ignored here (logged), and the parameter ``n_envs`` > 1 is an error.

Topics:

=====================  ================================  =========================================
/diagnostics           diagnostic_msgs/DiagnosticArray   one status "trainer_node: <method>" per
                                                          log/evaluation event: step, total_steps,
                                                          return, success, normalised return,
                                                          losses, steps/s; level ERROR on failure
<topics.policy>        std_msgs/String, EVENTS QoS       path of each new policy checkpoint, a
                       (reliable, transient local)       copy ``out_dir/policies/policy_<step>
                                                          .safetensors`` (the last ``keep_policies``
                                                          are kept), so controller_node hot-swaps;
                                                          with ``transfer_checkpoints`` a JSON
                                                          announcement (path, size, sha256)
<topics.policy>        std_msgs/UInt8MultiArray,          with ``transfer_checkpoints``: the
/checkpoint            reliable, transient local, depth 1 checkpoint's bytes (smiling_ros.learn
                                                          .transfer), for a controller on another
                                                          machine
=====================  ================================  =========================================

SIGINT/SIGTERM: training stops at the next log event (every ``log_every`` env steps), writes a
checkpoint, announces it and the node exits 0; ``resume:=true`` continues from there. A stop
before the trainer's first event (loading, demonstration-net pre-training, the first
``log_every`` steps) exits at once: nothing new to keep yet.
Bad parameters, configs or datasets: one line on stderr and exit status 2.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Optional

from rclpy.node import Node

from smiling_ros.errors import UserError
from smiling_ros.methods import trainer
from smiling_ros.ros.node_utils import ParamSpec, declare_params, param, run_node
from smiling_ros.ros.qos import EVENTS

NODE_NAME = "trainer_node"
BACKENDS = ("mujoco", "ros")
DEFAULT_LOG_EVERY = 100  # env steps between progress events unless the config asks for fewer

PARAMETERS: ParamSpec = {
    "config": (str, "task config: a YAML path or a shipped name (arm_reach, hopper); default arm_reach"),
    "dataset": (str, "demonstration dataset directory (smiling-ros import-bag / rollout). Required"),
    "out_dir": (str, "run directory (checkpoints, logs, policies); default runs/smiling"),
    "steps": (int, "env steps in total (BC: gradient steps); unset: the config's smiling.total_steps"),
    "backend": (str, "'mujoco' (the task in-process) or 'ros' (a robot over topics, e.g. sim_node in lockstep)"),
    "method": (str, "'smiling' (default), 'dac' or 'bc'"),
    "device": (str, "'auto' (CUDA when present, else CPU), 'cpu' or 'cuda[:N]'"),
    "resume": (bool, "continue the run in out_dir from its last checkpoint"),
    "seed": (int, "unset: smiling.seed, else the config's seed"),
    "reset_service": (str, "backend 'ros': std_srvs/Trigger that starts an episode; default /sim_node/reset"),
    "robot_mode": (str, "backend 'ros': 'lockstep' (one observation per command, default) or 'realtime'"),
    "timeout_s": (float, "backend 'ros': wait this long for an observation / the reset service [s]; default 5"),
    "end_grace_s": (float, "backend 'ros': wait this long after an observation for an episode end marker [s]"),
    "log_every": (int, "env steps between progress messages (and train.csv rows); unset: min(config, 100)"),
    "n_envs": (int, "backend 'mujoco': simulator copies stepped together; unset: the config's smiling.n_envs "
                    "(a resumed run keeps its own); backend 'ros' is always 1 env"),
    "policy_topic": (str, "new-checkpoint announcements; unset: the config's topics.policy"),
    "keep_policies": (int, "announced policy copies kept in out_dir/policies (oldest deleted); default 10"),
    "transfer_checkpoints": (bool, "also send each announced checkpoint's bytes on <policy_topic>/checkpoint, for "
                                   "a controller on another machine (JSON announcements); default false"),
}

# metric name in the trainer's events -> key in /diagnostics
_DIAG_KEYS = {
    "ep_return": "return", "ep_length": "episode_length", "episodes": "episodes",
    "eval/mean_return": "eval_return", "eval/success_rate": "success", "eval/normalized_return": "normalized_return",
    "critic_loss": "critic_loss", "actor_loss": "actor_loss", "ent_coef": "ent_coef", "learner_loss": "learner_loss",
    "disc_loss": "disc_loss", "disc_acc": "disc_acc", "reward_raw_mean": "reward_raw_mean", "loss": "loss",
    "steps_per_s": "steps_per_s",
}


@dataclasses.dataclass
class TrainerSettings:
    """Validated parameters (unset ones resolved from the config)."""

    cfg: Any
    dataset: Path
    out_dir: Path
    steps: Optional[int]
    backend: str
    method: str
    device: str
    resume: bool
    seed: Optional[int]
    reset_service: str
    robot_mode: str
    timeout_s: float
    end_grace_s: float
    policy_topic: str
    keep_policies: int
    n_envs: Optional[int] = None  # passed to the trainer; None: the config's (or a resumed run's)
    transfer_checkpoints: bool = False


def read_settings(node: Node) -> TrainerSettings:
    """Parameters -> :class:`TrainerSettings`; every problem is a one-line UserError."""
    from smiling_ros.config import load_config

    p = lambda name, default=None: param(node, PARAMETERS, name, default)  # noqa: E731
    cfg = load_config(p("config", "arm_reach"))
    backend = p("backend", "mujoco")
    if backend not in BACKENDS:
        raise UserError(f"parameter 'backend': 'mujoco' or 'ros', got '{backend}'")
    method = p("method", "smiling")
    trainer(method, "parameter 'method'")  # the registry the CLI's train verbs use
    if backend == "mujoco" and not cfg.task.env:
        raise UserError(f"{cfg.path}: task.env is empty, so backend 'mujoco' has nothing to simulate; "
                        f"use backend:=ros with a robot")
    dataset = p("dataset", "")
    if not dataset:
        raise UserError("parameter 'dataset' is required (a dataset directory made by 'smiling-ros import-bag')")
    steps = p("steps")
    if steps is not None and steps < 1:
        raise UserError(f"parameter 'steps': must be >= 1, got {steps}")
    robot_mode = p("robot_mode", "lockstep")
    if robot_mode not in ("lockstep", "realtime"):
        raise UserError(f"parameter 'robot_mode': 'lockstep' or 'realtime', got '{robot_mode}'")
    timeout_s = p("timeout_s", 5.0)
    end_grace_s = p("end_grace_s", 0.005)
    if timeout_s <= 0 or end_grace_s < 0:
        raise UserError("parameters 'timeout_s' (> 0) and 'end_grace_s' (>= 0) out of range")
    reset_service = p("reset_service", "/sim_node/reset")
    if not reset_service.startswith("/"):
        raise UserError(f"parameter 'reset_service': an absolute name ('/sim_node/reset'), got '{reset_service}'")
    policy_topic = p("policy_topic", cfg.topics.policy)
    if not policy_topic.startswith("/"):
        raise UserError(f"parameter 'policy_topic': an absolute topic name, got '{policy_topic}'")
    keep = p("keep_policies", 10)
    if keep < 1:
        raise UserError(f"parameter 'keep_policies': must be >= 1, got {keep}")
    log_every = p("log_every")
    if log_every is not None and log_every < 1:
        raise UserError(f"parameter 'log_every': must be >= 1, got {log_every}")
    if method != "bc":
        from smiling_ros.methods.smiling.config import smiling_section

        have = smiling_section(cfg).log_every
        smiling = {**cfg.smiling, "log_every": log_every or min(have, DEFAULT_LOG_EVERY)}
        cfg = cfg.with_section("smiling", smiling)
        smiling_section(cfg)  # re-validate
    n_envs = p("n_envs")
    if n_envs is not None and n_envs < 1:
        raise UserError(f"parameter 'n_envs': must be >= 1, got {n_envs}")
    if backend == "ros" and method != "bc":
        if n_envs is not None and n_envs > 1:
            raise UserError(f"parameter 'n_envs': backend 'ros' steps one robot, so n_envs must be 1, got {n_envs} "
                            f"(several simulator copies: backend:=mujoco)")
        have = smiling_section(cfg).n_envs
        if n_envs is None and have > 1:
            node.get_logger().info(f"backend 'ros' steps one robot: the config's smiling.n_envs={have} is not used")
        n_envs = 1
    return TrainerSettings(cfg, Path(dataset), Path(p("out_dir", "runs/smiling")), steps, backend, method,
                           p("device", "auto"), p("resume", False), p("seed"), reset_service, robot_mode,
                           timeout_s, end_grace_s, policy_topic, keep, n_envs if method != "bc" else None,
                           bool(p("transfer_checkpoints", False)))


class TrainerNode(Node):
    """Training on a worker thread; progress and checkpoints out on topics (module docstring)."""

    def __init__(self, **kwargs: Any):
        super().__init__(NODE_NAME, **kwargs)
        declare_params(self, PARAMETERS)
        s = self.settings = read_settings(self)
        import torch
        from diagnostic_msgs.msg import DiagnosticArray
        from std_msgs.msg import String

        from smiling_ros.data.dataset import Dataset
        from smiling_ros.learn.device import select_device

        if torch.get_num_threads() > 4:  # small nets: more threads only contend with the env and DDS
            torch.set_num_threads(4)
        self.dataset = Dataset.load(s.dataset)
        self.device = str(select_device(s.device))
        self.fn = self._method_fn(s.method)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.pub_policy = self.create_publisher(String, s.policy_topic, EVENTS)
        self.announcer = None
        if s.transfer_checkpoints:
            from smiling_ros.ros.transfer import CheckpointAnnouncer

            self.announcer = CheckpointAnnouncer(self, s.policy_topic, inline=True, publisher=self.pub_policy)
        self.done = False
        self.exit_code = 0
        self.result: Optional[Path] = None
        self.abandoned = False  # the worker was left running at exit (stopped during setup)
        self._stop = threading.Event()
        self._stepped = threading.Event()  # the trainer's first event (log or checkpoint) arrived
        self._values: dict[str, str] = {}
        self._step = 0
        self._last_ckpt: Optional[int] = None
        # Policy copies on disk, oldest first (a resumed run keeps pruning its predecessor's).
        self._announced: list[Path] = sorted((s.out_dir / "policies").glob("policy_*.safetensors"))
        self.total = s.steps
        resumed = self._last_ckpt = self._resume_step() if s.resume else None
        self.get_logger().info(
            f"{s.method} on {s.cfg.task.env or 'robot'} ({s.backend} backend{self._envs_text()}, device "
            f"{self.device}), dataset "
            f"{s.dataset} ({len(self.dataset.obs)} states), out {s.out_dir}"
            + (f", resuming at step {resumed}" if resumed is not None else "")
            + f"; policies announced on {s.policy_topic}")
        self._worker = threading.Thread(target=self._work, name="trainer", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ setup
    @staticmethod
    def _method_fn(method: str):
        return trainer(method, "parameter 'method'")

    def _resume_step(self) -> Optional[int]:
        """Step of the checkpoint a resumed run continues from (None when unknown)."""
        from smiling_ros.learn.checkpoint import load_checkpoint

        state = self.settings.out_dir / "state.safetensors"
        if not state.exists():
            return None  # the trainer reports it as one line
        try:
            return int(load_checkpoint(state).meta["step"])
        except (UserError, KeyError, TypeError, ValueError):
            return None

    def _envs_text(self) -> str:
        """', N envs' for the start-up line when the run steps several env copies."""
        s = self.settings
        if s.method == "bc":
            return ""
        from smiling_ros.methods.smiling.config import smiling_section

        n = s.n_envs if s.n_envs is not None else smiling_section(s.cfg).n_envs
        return f", {n} envs" if n > 1 else ""

    def _env_fns(self):
        """(env_fn, eval_env_fn, cfg) for the chosen backend."""
        s = self.settings
        if s.backend == "mujoco":
            return None, None, s.cfg
        from smiling_ros.ros.env import RosRobotEnv

        def env_fn():
            return RosRobotEnv(s.cfg, reset_service=s.reset_service, mode=s.robot_mode, timeout_s=s.timeout_s,
                               end_grace_s=s.end_grace_s, node_name="trainer_node_env")

        cfg = s.cfg
        if cfg.task.env:  # evaluate on the task in-process, never on the robot mid-training
            from smiling_ros.methods.smiling.trainer import default_env_fn

            return env_fn, default_env_fn(cfg), cfg
        if s.method != "bc":  # a real robot without a simulator: no periodic evaluation
            cfg = cfg.with_section("smiling", {**cfg.smiling, "eval_episodes": 0})
        return env_fn, None, cfg

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        s = self.settings
        try:
            env_fn, eval_fn, cfg = self._env_fns()
            common = dict(env_fn=env_fn, device=self.device, callback=self._on_event, progress=sys.stderr.isatty(),
                          seed=s.seed)
            if s.method == "bc":
                if s.resume:
                    raise UserError("parameter 'resume': BC runs are short and have no resumable state")
                self.result = self.fn(cfg, self.dataset, s.out_dir, steps=s.steps, **common)
            else:
                self.result = self.fn(cfg, self.dataset, s.out_dir, total_steps=s.steps, resume=s.resume,
                                      eval_env_fn=eval_fn, n_envs=s.n_envs, **common)
            how = "stopped" if self._stop.is_set() else "finished"
            self.get_logger().info(f"training {how} at step {self._step}; policy {self.result}")
            self._publish_diag(0, f"{how} at step {self._step}")
        except UserError as exc:
            if self._stop.is_set() and s.backend == "ros":  # shut down together with the robot (launch)
                self.get_logger().warning(f"stopped; the robot went away first ({exc}); the last checkpoint "
                                          f"(step {self._last_ckpt}) is kept")
                return
            print(f"{NODE_NAME}: error: {exc}", file=sys.stderr, flush=True)
            self._publish_diag(2, str(exc))
            self.exit_code = exc.exit_code
        except Exception as exc:  # noqa: BLE001 - a bug: keep the traceback for the report
            traceback.print_exc()
            self._publish_diag(2, f"{type(exc).__name__}: {exc}")
            self.exit_code = 1
        finally:
            self.done = True

    def _on_event(self, event: dict) -> Optional[bool]:
        """The trainer's callback (worker thread): diagnostics, announcements, stop requests."""
        step = int(event.get("step", self._step))
        self._step = step
        self._stepped.set()
        if "checkpoint" in event:
            self._last_ckpt = step
            self._announce(Path(event["checkpoint"]), step)
        metrics = event.get("metrics")
        if metrics is not None:
            for k, v in metrics.items():
                key = _DIAG_KEYS.get(k)
                if key is not None and v is not None and v != "":
                    self._values[key] = f"{float(v):.6g}" if isinstance(v, (int, float)) else str(v)
            self._publish_diag(0, f"step {step}" + (f"/{self.total}" if self.total else ""))
        return not self._stop.is_set()

    def _announce(self, policy: Path, step: int) -> None:
        """Copy the policy to out_dir/policies/policy_<step>.safetensors (atomically) and announce it."""
        from smiling_ros.ros.msgs import string_msg

        folder = self.settings.out_dir / "policies"
        folder.mkdir(parents=True, exist_ok=True)
        dest = folder / f"policy_{step:09d}.safetensors"
        for src, dst in ((policy, dest), (policy.with_suffix(".json"), dest.with_suffix(".json"))):
            if src.exists():
                tmp = dst.with_name(f".{dst.name}.tmp")
                shutil.copyfile(src, tmp)
                os.replace(tmp, dst)
        if dest in self._announced:
            self._announced.remove(dest)
        self._announced.append(dest)
        while len(self._announced) > self.settings.keep_policies:
            old = self._announced.pop(0)
            for f in (old, old.with_suffix(".json")):
                f.unlink(missing_ok=True)
        path = str(dest.resolve())
        if self.announcer is not None:
            self.announcer.announce(path)  # the bytes, then a JSON announcement with path and hash
        else:
            self.pub_policy.publish(string_msg(path))
        self.get_logger().info(f"step {step}: new policy {path}")

    def _publish_diag(self, level: int, message: str) -> None:
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

        s = self.settings
        status = DiagnosticStatus()
        status.level = bytes([level]) if isinstance(DiagnosticStatus().level, bytes) else level
        status.name = f"{NODE_NAME}: {s.method}"
        status.message = message
        status.hardware_id = s.cfg.task.env or "robot"
        values = {"step": str(self._step), "total_steps": str(self.total or ""), "backend": s.backend,
                  "device": self.device, **self._values}
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [status]
        try:
            self.pub_diag.publish(msg)
        except Exception:  # noqa: BLE001 - context already shut down at exit
            pass

    # ------------------------------------------------------------------ shutdown
    def close(self) -> None:
        """Stop training cleanly (a checkpoint is written at the next log event) and wait for it."""
        if self._worker.is_alive():
            self._stop.set()
            if not self._stepped.is_set():
                # Still loading / pre-training the score nets: nothing to checkpoint yet.
                self._worker.join(timeout=1.0)
                if self._worker.is_alive():
                    self.get_logger().info("stopped before training's first progress event: nothing new to keep")
                    self.abandoned = True
                    return
            self.get_logger().info("stopping: writing a checkpoint at the next log event")
            self._worker.join()


def main(argv: Optional[list[str]] = None) -> int:
    """Console script ``trainer_node`` (also ``ros2 run smiling_ros trainer_node``)."""
    from smiling_ros.learn.runtime import limit_threads

    limit_threads()
    holder: dict[str, TrainerNode] = {}

    def factory() -> TrainerNode:
        holder["node"] = TrainerNode()
        return holder["node"]

    code = run_node(NODE_NAME, factory, argv)
    node = holder.get("node")
    if node is not None and node.abandoned:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # the worker is mid-setup in native code; nothing of value to wait for
    return code


if __name__ == "__main__":
    sys.exit(main())
