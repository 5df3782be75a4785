"""A Gymnasium env whose steps go to a robot over ROS 2 topics (the robot may be sim_node).

    from smiling_ros.ros.env import RosRobotEnv
    env = RosRobotEnv(load_config("arm_reach"), reset_service="/sim_node/reset", mode="lockstep")
    obs, info = env.reset()
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    env.close()

What goes over the wire (names from the config):

- observation: the fields of ``cfg.observation`` (any message types), subscribed with SENSOR
  QoS and assembled into one float64 vector by :class:`smiling_ros.io.fields.VectorAssembler`
  (the same mapping ``import-bag`` uses, so the policy sees what it was trained on).
- action: the message of ``cfg.command.interface`` (smiling_ros.io.commands: Float64MultiArray
  for ``forward``, a one-point JointTrajectory one step ahead for ``joint_trajectory``, a
  TwistStamped for ``servo_twist``) on ``cfg.command_topic`` with COMMAND QoS (reliable, keep
  last 1), clipped to the action space; NaN/inf actions are refused.
- reset: a ``std_srvs/Trigger`` service (``reset_service``). sim_node's ``~/reset`` answers with
  JSON ``{"episode": k, "observation": [...]}``; ``k`` identifies the episode's end marker.
- episode end: ``{"event": "end", ...}`` markers on ``cfg.topics.episode`` (std_msgs/String,
  EVENTS QoS) give ``terminated``/``truncated``/``success``/``return``; independently, the env
  truncates after ``max_episode_steps`` steps (default ``cfg.task.max_episode_steps``).

Timing. ``mode='lockstep'``: the robot answers each command with exactly one message on each
observation topic (sim_node ``mode:=lockstep``); ``step`` publishes the action and returns once
every observation topic has delivered a message newer than the command. ``mode='realtime'``:
the robot runs on its own clock; ``step`` publishes the action, waits until one control period
(1 / ``rate_hz`` s) has passed since the previous step and returns the latest observation.
sim_node publishes an episode's last observation just before its end marker, so after the
observation ``step`` waits up to ``end_grace_s`` for the marker (only once markers have been
seen on the topic); a marker that still arrives later (the robot then ignores commands) ends
the episode at the next ``step`` with the last observation repeated.

Reward. The robot does not publish a per-step reward, so ``step`` returns 0, except on the step
that ends an episode whose end marker carries ``"return"``: that step returns the whole
episode's return, so episode returns (SB3's Monitor, train.csv) are the robot's true ones.
SMILING and DAC relabel every reward at sample time with their own cost, so the env reward
never reaches the learner; do not train SAC on the env reward with this env.
``info['is_success']`` is the end marker's ``success`` on the last step of an episode.

Spaces. When the config's task exists in-process (``make_env_from_config`` works), both
spaces come from it; otherwise the observation dimension comes from the fields' declared sizes
or from the first observation, and the action space from ``limits.action_low/high``.

The env owns a private rclpy context, node and executor spun on a background thread, so it
works inside any program (scripts, notebooks, the trainer node's worker thread) without
touching the program's own rclpy state or signal handlers. Call :meth:`close` when done.
Construction waits (up to ``timeout_s``) until the robot's topics are matched, so a robot that
is not running fails at once. Every timeout is a :class:`UserError` naming the topic or service.
"""
from __future__ import annotations

import json
import threading
import time
from typing import Any, Optional

import gymnasium
import numpy as np
from gymnasium import spaces

from smiling_ros.errors import UserError

DEFAULT_RESET_SERVICE = "/sim_node/reset"
MODES = ("lockstep", "realtime")


def _hint() -> str:
    import os

    dom = os.environ.get("ROS_DOMAIN_ID", "0")
    return f"is the robot running? check ROS_DOMAIN_ID (here {dom})"


class RosRobotEnv(gymnasium.Env):
    """A robot behind ROS 2 topics as a Gymnasium env (see the module docstring).

    Args:
        cfg: :class:`smiling_ros.config.Config` (topics, observation fields, rate, limits, task).
        reset_service: ``std_srvs/srv/Trigger`` service that starts a new episode.
        mode: ``'lockstep'`` or ``'realtime'``.
        timeout_s: how long to wait for an observation, a subscriber or the reset service [s].
        max_episode_steps: truncation horizon (default ``cfg.task.max_episode_steps``; None/0: none).
        end_grace_s: after an observation, how long to wait for an end marker [s].
        node_name: name of the env's own node.
        domain_id: ROS domain of the private context (default: ``ROS_DOMAIN_ID``).
        observation_space, action_space: override the spaces.
    """

    metadata = {"render_modes": []}

    def __init__(self, cfg, reset_service: str = DEFAULT_RESET_SERVICE, mode: str = "lockstep",
                 timeout_s: float = 5.0, max_episode_steps: Optional[int] = None, end_grace_s: float = 0.005,
                 node_name: str = "smiling_ros_env", domain_id: Optional[int] = None,
                 observation_space: Optional[spaces.Box] = None, action_space: Optional[spaces.Box] = None):
        if mode not in MODES:
            raise UserError(f"RosRobotEnv mode: 'lockstep' or 'realtime', got '{mode}'")
        if not (timeout_s > 0):
            raise UserError(f"RosRobotEnv timeout_s: must be > 0, got {timeout_s}")
        if not reset_service.startswith("/"):
            raise UserError(f"reset service '{reset_service}': give an absolute name ('/sim_node/reset')")
        self.cfg = cfg
        self.mode = mode
        self.timeout_s = float(timeout_s)
        self.end_grace_s = max(0.0, float(end_grace_s))
        self.reset_service = reset_service
        self.period_s = 1.0 / float(cfg.rate_hz)
        mes = cfg.task.max_episode_steps if max_episode_steps is None else max_episode_steps
        self.max_episode_steps = int(mes) if mes else None
        self.command_topic = cfg.command_topic
        self.episode_topic = cfg.topics.episode

        from smiling_ros.io.fields import VectorAssembler

        self._assembler = VectorAssembler(cfg.observation)
        self._topics = list(dict.fromkeys(s.topic for s in cfg.observation))
        self._obs_topic_names = ", ".join(self._topics)
        self._types = self._assembler.topics()
        for topic in self._topics:
            if not self._types.get(topic):
                raise UserError(f"{cfg.path or 'config'}: observation topic '{topic}' needs a 'type' "
                                f"(e.g. std_msgs/msg/Float64MultiArray) to subscribe to it")

        # Shared state, guarded by self._cv (callbacks run on the spin thread).
        self._cv = threading.Condition()
        self._counts = {t: 0 for t in self._topics}  # messages received per observation topic
        self._error: Optional[BaseException] = None  # raised in a callback, re-raised in step/reset
        self._markers_seen = False
        self._episode: Optional[int] = None  # robot's index of the running episode (None: unknown)
        self._accept_end = False
        self._end: Optional[dict[str, Any]] = None  # end marker of the running episode
        self._closed = False
        self._steps = 0
        self._needs_reset = True
        self._last_obs: Optional[np.ndarray] = None
        self._last_step_t = 0.0

        self._ros_init(node_name, domain_id)
        try:
            self._wait_for_robot()
            self._setup_spaces(observation_space, action_space)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ ROS plumbing
    def _ros_init(self, node_name: str, domain_id: Optional[int]) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions
        from std_msgs.msg import String
        from std_srvs.srv import Trigger

        from smiling_ros.ros import msgs
        from smiling_ros.ros.commands import command_message_class
        from smiling_ros.ros.dds_env import ensure_local_dds
        from smiling_ros.ros.qos import COMMAND, EVENTS, SENSOR

        ensure_local_dds()
        self._ctx = rclpy.Context()
        # args=[] and use_global_arguments=False: the program's command line (a launch file's
        # ``__node:=`` remap, ``--params-file``) belongs to the program's own node, never to this one.
        rclpy.init(args=[], context=self._ctx, domain_id=domain_id, signal_handler_options=SignalHandlerOptions.NO)
        self._node = rclpy.create_node(node_name, context=self._ctx, use_global_arguments=False,
                                       start_parameter_services=False)
        self._subs = []
        for topic in self._topics:
            cls = msgs.message_class(self._types[topic])
            self._subs.append(self._node.create_subscription(
                cls, topic, lambda msg, t=topic: self._on_observation(t, msg), SENSOR))
        self._subs.append(self._node.create_subscription(String, self.episode_topic, self._on_marker, EVENTS))
        self._pub: Any = self._node.create_publisher(command_message_class(self.cfg.command.interface),
                                                     self.command_topic, COMMAND)
        self._out: Any = None  # CommandOutput, once the action space is known
        self._client: Any = self._node.create_client(Trigger, self.reset_service)
        self._trigger = Trigger
        self._executor = SingleThreadedExecutor(context=self._ctx)
        self._executor.add_node(self._node)
        self._spinning = True
        self._thread = threading.Thread(target=self._spin, name="ros-robot-env", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while self._spinning:
            try:
                self._executor.spin_once(timeout_sec=0.05)
            except Exception as exc:  # noqa: BLE001 - context shut down under us, or a callback bug
                if not self._spinning:
                    return
                with self._cv:
                    self._error = exc
                    self._cv.notify_all()
                time.sleep(0.05)

    def _on_observation(self, topic: str, msg: Any) -> None:
        with self._cv:
            try:
                self._assembler.update(topic, msg, time.time_ns(), ros_ns=self._node.get_clock().now().nanoseconds)
            except UserError as exc:  # wrong field, dimension change: surfaces in step/reset
                self._error = exc
            self._counts[topic] += 1
            self._cv.notify_all()

    def _on_marker(self, msg: Any) -> None:
        from smiling_ros.data.episodes import parse_marker_text

        marker = parse_marker_text(msg.data)
        if marker is None:
            return
        with self._cv:
            self._markers_seen = True
            if marker["event"] == "end" and self._accept_end and self._end is None:
                same = marker.get("episode") == self._episode if self._episode is not None \
                    else marker.get("reason") != "reset"
                if same:
                    self._end = marker
            self._cv.notify_all()

    def _wait(self, pred, timeout: float) -> bool:
        """Wait (holding the condition) until ``pred()`` or ``timeout`` s; re-raise callback errors."""
        deadline = time.monotonic() + timeout
        while True:
            if self._error is not None:
                err, self._error = self._error, None
                if isinstance(err, UserError):
                    raise err
                raise UserError(f"ROS error while waiting for {self._obs_topic_names}: {str(err).splitlines()[0]}")
            if pred():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._cv.wait(min(left, 0.05))

    def _no_observation(self) -> UserError:
        missing = [t for t in self._topics if self._counts[t] == 0] or self._topics
        return UserError(f"no observation on {', '.join(missing)} within {self.timeout_s:g} s: {_hint()}")

    # ------------------------------------------------------------------ spaces
    def _setup_spaces(self, observation_space, action_space) -> None:
        sim = None
        if (observation_space is None or action_space is None) and self.cfg.task.env:
            try:
                from smiling_ros.envs import make_env_from_config

                sim = make_env_from_config(self.cfg)
            except UserError:
                sim = None
        declared = self._assembler.dim
        if observation_space is None and sim is not None:
            box = sim.observation_space
            if isinstance(box, spaces.Box) and (declared is None or declared == int(np.prod(box.shape))):
                observation_space = spaces.Box(-np.inf, np.inf, (int(np.prod(box.shape)),), box.dtype)
        if action_space is None:
            action_space = self._action_space_from(sim)
        if sim is not None:
            sim.close()
        if observation_space is None:
            dim = declared
            if dim is None:
                self._initial_reset()
                dim = int(np.asarray(self._last_obs).size)
            observation_space = spaces.Box(-np.inf, np.inf, (dim,), np.float64)
        self.observation_space = observation_space
        self.action_space = action_space
        self.obs_dim = int(np.prod(observation_space.shape))
        self.act_dim = int(np.prod(action_space.shape))
        from smiling_ros.io.commands import CommandSpec
        from smiling_ros.ros.commands import CommandOutput
        from smiling_ros.ros.qos import COMMAND

        spec = CommandSpec.resolve(self.cfg, action_space.low, action_space.high, self.period_s,
                                   topic=self.command_topic)
        self._out = CommandOutput(self._node, spec, COMMAND, publisher=self._pub,
                                  joint_states_topic=self.cfg.topics.joint_states,
                                  max_joint_age_s=max(self.timeout_s, 2 * self.period_s))

    def _action_space_from(self, sim) -> spaces.Box:
        lim = self.cfg.limits
        if lim.action_low:
            low = np.asarray(lim.action_low, np.float32)
            high = np.asarray(lim.action_high, np.float32)
            if sim is not None and low.shape != sim.action_space.shape:
                raise UserError(f"{self.cfg.path or 'config'}: limits.action_low has {low.size} elements but "
                                f"task '{self.cfg.task.env}' has {int(np.prod(sim.action_space.shape))} actions")
            return spaces.Box(low, high, dtype=np.float32)
        if sim is not None and isinstance(sim.action_space, spaces.Box):
            a = sim.action_space
            return spaces.Box(a.low.astype(np.float32), a.high.astype(np.float32), dtype=np.float32)
        raise UserError(f"{self.cfg.path or 'config'}: no simulator for this robot (task.env), so set "
                        f"limits.action_low and limits.action_high to define the action space")

    # ------------------------------------------------------------------ episodes
    def _call_reset(self) -> dict[str, Any]:
        """Call the reset service once; its response message parsed as JSON when it is JSON."""
        if not self._client.wait_for_service(timeout_sec=self.timeout_s):
            raise UserError(f"reset service {self.reset_service} not available within {self.timeout_s:g} s: {_hint()}")
        future = self._client.call_async(self._trigger.Request())
        done = threading.Event()
        future.add_done_callback(lambda _f: done.set())
        if not done.wait(self.timeout_s):
            self._client.remove_pending_request(future)
            raise UserError(f"reset service {self.reset_service}: no response within {self.timeout_s:g} s")
        resp = future.result()
        if resp is None or not resp.success:
            why = getattr(resp, "message", "") or "no reason given"
            raise UserError(f"reset service {self.reset_service} refused to reset: {why}")
        try:
            data = json.loads(resp.message)
        except (TypeError, ValueError):
            data = {}
        return data if isinstance(data, dict) else {}

    def _wait_for_robot(self) -> None:
        """Until every observation topic has a publisher and the command topic a subscriber."""
        deadline = time.monotonic() + self.timeout_s
        for sub in self._subs[:len(self._topics)]:
            while sub.get_publisher_count() < 1:
                if time.monotonic() > deadline:
                    raise UserError(f"no observation on {sub.topic_name} within {self.timeout_s:g} s "
                                    f"(no publisher): {_hint()}")
                time.sleep(0.01)
        while self._pub.get_subscription_count() < 1:
            if time.monotonic() > deadline:
                raise UserError(f"nobody subscribes to {self.command_topic} within {self.timeout_s:g} s: {_hint()}")
            time.sleep(0.01)

    def _fresh(self, since: dict[str, int]) -> bool:
        return all(self._counts[t] > since[t] for t in self._topics)

    def _initial_reset(self) -> np.ndarray:
        """Start an episode and return its first observation (retries a reset whose observation
        got lost while DDS endpoints were still matching)."""
        self._wait_for_robot()
        deadline = time.monotonic() + self.timeout_s
        while True:
            with self._cv:
                since = dict(self._counts)
                self._accept_end, self._end, self._episode = False, None, None
            data = self._call_reset()
            with self._cv:
                ep = data.get("episode")
                self._episode = int(ep) if isinstance(ep, int) else None
                self._accept_end = True
                wait = min(1.0, max(0.0, deadline - time.monotonic()))
                if self._wait(lambda since=since: self._fresh(since) and self._assembler.ready(), wait):
                    obs = self._assembler.vector()
                    break
            if time.monotonic() >= deadline:
                raise self._no_observation()
        self._last_obs = obs
        self._steps = 0
        self._needs_reset = False
        self._last_step_t = time.monotonic()
        return obs

    def _obs_out(self, obs: np.ndarray) -> np.ndarray:
        if obs.size != self.obs_dim:
            raise UserError(f"observation from {self._obs_topic_names} has {obs.size} elements but the env's "
                            f"observation space has {self.obs_dim} (config fields vs task '{self.cfg.task.env}')")
        return obs.astype(self.observation_space.dtype, copy=False)

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        """Start a new episode through the reset service. ``seed`` only seeds the action space
        (the robot chooses its own initial state). Returns ``(obs, info)``; ``info["robot_episode"]`` is
        the robot's episode index when it reports one."""
        super().reset(seed=seed)
        if seed is not None:
            self.action_space.seed(seed)
        self._check_open()
        obs = self._initial_reset()
        return self._obs_out(obs), {"robot_episode": self._episode}

    def step(self, action):
        """Publish ``action`` (act_dim,) and return the robot's next observation (see the module
        docstring for timing, reward and termination)."""
        self._check_open()
        if self._needs_reset:
            raise RuntimeError("RosRobotEnv.step() called before reset() or after the episode ended")
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.size != self.act_dim:
            raise UserError(f"action has {a.size} elements, the robot on {self.command_topic} takes {self.act_dim}")
        if not np.all(np.isfinite(a)):
            raise UserError(f"action contains NaN/inf; not sent to {self.command_topic}")
        a = np.clip(a, self.action_space.low, self.action_space.high)

        late_end = False
        with self._cv:
            if self._end is not None:  # the marker came after the previous step returned
                late_end = True
            since = dict(self._counts)
        if not late_end:
            if not self._out.send(a):
                raise UserError(f"{self.command_topic}: {self._out.last_warning}")
            with self._cv:
                if self.mode == "lockstep":
                    ok = self._wait(lambda: self._fresh(since) or self._end is not None, self.timeout_s)
                    if not ok:
                        raise self._no_observation()
                    if not self._fresh(since):  # woke on a marker: an out-of-order one, or the
                        # robot ignored the command because the episode had already ended
                        self._wait(lambda: self._fresh(since), max(self.end_grace_s, 0.05))
                        late_end = not self._fresh(since)
                else:
                    wait = self._last_step_t + self.period_s - time.monotonic()
                    self._wait(lambda: False, max(0.0, wait))
                    if not self._assembler.ready():
                        raise self._no_observation()
                self._last_step_t = time.monotonic()
                if not late_end:
                    self._last_obs = self._assembler.vector()
                    self._steps += 1
                    if self._markers_seen and self._end is None:
                        horizon = self.max_episode_steps is not None and self._steps >= self.max_episode_steps
                        self._wait(lambda: self._end is not None, 1.0 if horizon else self.end_grace_s)
        with self._cv:
            end = self._end
        obs = self._last_obs
        terminated = truncated = False
        reward = 0.0
        info: dict[str, Any] = {"robot_episode": self._episode, "steps": self._steps}
        if end is not None:
            terminated = bool(end.get("terminated", False))
            truncated = bool(end.get("truncated", False)) or not terminated
            if "success" in end:
                info["is_success"] = bool(end["success"])
            if isinstance(end.get("return"), (int, float)):
                reward = float(end["return"])
                info["episode_return"] = reward
            info["end_marker"] = end
        elif self.max_episode_steps is not None and self._steps >= self.max_episode_steps:
            truncated = True
        if terminated or truncated:
            self._needs_reset = True
        return self._obs_out(obs), reward, terminated, truncated, info

    # ------------------------------------------------------------------ lifecycle
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("RosRobotEnv is closed")

    def close(self) -> None:
        """Stop the spin thread and release the node and the private context (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._spinning = False
        thread = getattr(self, "_thread", None)
        if thread is not None:
            thread.join(timeout=2.0)
        try:
            if getattr(self, "_executor", None) is not None:
                self._executor.shutdown(timeout_sec=1.0)
            if getattr(self, "_node", None) is not None:
                self._node.destroy_node()
        finally:
            ctx = getattr(self, "_ctx", None)
            if ctx is not None and ctx.ok():
                ctx.try_shutdown()

    def __del__(self):  # pragma: no cover - best effort for envs never closed
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass
