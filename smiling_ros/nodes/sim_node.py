"""sim_node: a MuJoCo task (the own ArmReach or any Gymnasium MuJoCo id) as a robot on ROS 2.

    sim_node --ros-args -p config:=arm_reach                       # real time, waits for commands
    sim_node --ros-args -p config:=arm_reach -p expert:=scripted   # drives itself, like teleoperation
    sim_node --ros-args -p config:=hopper -p mode:=lockstep        # one step per command (training)

Topics (names from the config's ``topics`` section, or the ``*_topic`` parameters):

=====================  ===============================  =========================================
topic (default)        type                             QoS / content
=====================  ===============================  =========================================
/joint_states          sensor_msgs/msg/JointState       STATE: reliable, volatile, keep last 10.
                                                        MuJoCo hinge/slide joint names, position
                                                        [rad|m], velocity; header.stamp = step time
/observation           std_msgs/msg/Float64MultiArray   STATE. data = the env's observation vector
                                                        (no layout), published with joint_states
/forward_command_      std_msgs/msg/Float64MultiArray   subscribed with SENSOR QoS (best effort,
controller/commands                                     matches any publisher); data = action
                                                        (act_dim elements, env units). Wrong size
                                                        or NaN/inf: ignored with a throttled
                                                        warning; values are clipped to the
                                                        action space. With ``expert`` set, the
                                                        node does not subscribe: it publishes the
                                                        expert's actions here (reliable, keep
                                                        last 10), one per step, before stepping.
(command.topic)        trajectory_msgs/msg/             ``command.interface: joint_trajectory``
                       JointTrajectory                  (realtime mode): a JTC-like follower
                                                        (smiling_ros.envs.follower) interpolates
                                                        the received points (stamp zero = start on
                                                        receipt) and turns them into the task's
                                                        actions, joints by ``command.joints``.
                                                        Followed in wall time: use time_scale 1.
/smiling_ros/episode   std_msgs/msg/String              EVENTS: reliable, transient local, keep
                                                        last 10. JSON markers:
                                                        {"event": "start", "episode": k} before the
                                                        episode's first observation;
                                                        {"event": "end", "episode": k, "success":
                                                        bool, "steps": n, "return": R,
                                                        "terminated": bool, "truncated": bool,
                                                        "reason": "done"|"reset"} after its last.
/clock                 rosgraph_msgs/msg/Clock          only with ``publish_clock``: simulated time
~/reset                std_srvs/srv/Trigger             ends the running episode (reason "reset")
                                                        and starts a new one; the response message
                                                        is JSON {"episode": k, "observation": [...]}
=====================  ===============================  =========================================

Timing of one step k (episode start time T, control period dt = 1 / rate_hz): observation k and
command k carry time T + k dt; observation k+1 carries T + (k+1) dt. With ``publish_clock`` the
node publishes /clock = that time before each group of messages, so a recorder with
``use_sim_time`` stamps the bag in simulated time even when ``time_scale`` > 1 runs the
simulation faster than real time; otherwise stamps are the node's clock at publishing.
An episode of n steps publishes n + 1 observations (the reset state and one per step).

Modes:
- ``realtime``: a timer at rate_hz * time_scale steps the env with the latest command (held
  between commands; zero after each reset), or with the expert's action. At the end of an
  episode (terminated or truncated) the env resets by itself.
- ``lockstep``: every valid command steps the env once and publishes the resulting state. After
  an episode ends, commands are ignored until ``~/reset`` is called.

Parameters (unset ones come from the config file, see PARAMETERS) include ``max_episodes``: the
node exits after that many episodes have ended, once subscribers acknowledged everything.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any, Optional

import numpy as np
import rclpy
from rclpy.node import Node

from smiling_ros.errors import UserError
from smiling_ros.ros import msgs
from smiling_ros.ros.node_utils import ParamSpec, declare_params, param, run_node, steady_clock
from smiling_ros.ros.qos import EVENTS, SENSOR, STATE

NODE_NAME = "sim_node"
LINGER_S = 30.0  # longest wait for the ``stop_after`` nodes after SIGINT

PARAMETERS: ParamSpec = {
    "config": (str, "task config: a YAML path or a shipped name (arm_reach, hopper); default arm_reach"),
    "env": (str, "Gymnasium env id; unset: the config's task.env"),
    "mode": (str, "'realtime' (timer at rate_hz, holds the last command) or 'lockstep' (one step per command)"),
    "rate_hz": (float, "control rate [Hz]; unset: the config's rate_hz"),
    "time_scale": (float, "realtime mode: simulated seconds per wall second (> 0); default 1"),
    "publish_clock": (bool, "publish /clock with the simulated time and stamp messages with it; default false"),
    "expert": (str, "'none', 'scripted' (the task's scripted expert) or a policy checkpoint path that drives the robot"),
    "seed": (int, "env and expert seed; unset: the config's seed"),
    "max_episodes": (int, "exit after this many episodes have ended (0: never)"),
    "wait_for_subscribers": (int, "start the first episode only once every topic has this many subscribers"),
    "joint_states_topic": (str, "unset: the config's topics.joint_states"),
    "observation_topic": (str, "unset: the config's topics.observation"),
    "command_topic": (str, "unset: the config's command.topic, else topics.command"),
    "command_interface": (str, "'forward' or 'joint_trajectory'; unset: the config's command.interface"),
    "episode_topic": (str, "unset: the config's topics.episode"),
    "stop_after": (list, "node names (e.g. trainer_node): on SIGINT keep serving until they have left the ROS graph "
                         f"(a trainer writing its final checkpoint), at most {LINGER_S:g} s; SIGTERM stops at once"),
}


class SimNode(Node):
    """The env behind topics (see the module docstring)."""

    def __init__(self, **kwargs: Any):
        super().__init__(NODE_NAME, **kwargs)
        declare_params(self, PARAMETERS)
        from smiling_ros.config import load_config
        from smiling_ros.envs import joint_state, make_env

        p = lambda name, default=None: param(self, PARAMETERS, name, default)  # noqa: E731
        cfg = load_config(p("config", "arm_reach"))
        self.cfg = cfg
        env_id = p("env", cfg.task.env)
        if not env_id:
            raise UserError(f"{cfg.path}: task.env is empty and no 'env' parameter given: nothing to simulate")
        self.mode = p("mode", "realtime")
        if self.mode not in ("realtime", "lockstep"):
            raise UserError(f"parameter 'mode': 'realtime' or 'lockstep', got '{self.mode}'")
        self.rate_hz = p("rate_hz", cfg.rate_hz)
        self.time_scale = p("time_scale", 1.0)
        if self.rate_hz <= 0 or self.time_scale <= 0:
            raise UserError("parameters 'rate_hz' and 'time_scale' must be > 0")
        self.publish_clock = p("publish_clock", False)
        self.max_episodes = p("max_episodes", 0)
        self.wait_for = p("wait_for_subscribers", 0)
        self.stop_after = [n.strip("/") for n in p("stop_after", [])]
        self._linger_until: Optional[float] = None
        seed = p("seed", cfg.seed)
        kwargs_env = dict(cfg.task.env_kwargs) if env_id == cfg.task.env else {}
        max_steps = cfg.task.max_episode_steps if env_id == cfg.task.env else None
        self.env = make_env(env_id, seed=seed, max_episode_steps=max_steps, **kwargs_env)
        self._joint_state = joint_state
        space: Any = self.env.action_space  # a Box (make_env refuses others)
        self.act_dim = int(np.prod(space.shape))
        self.low = np.asarray(space.low, dtype=np.float64)
        self.high = np.asarray(space.high, dtype=np.float64)
        self.dt_ns = int(round(1e9 / self.rate_hz))
        env_dt = getattr(self.env.unwrapped, "dt", None)
        if env_dt and abs(env_dt * self.rate_hz - 1.0) > 1e-3:
            self.get_logger().warning(f"rate_hz {self.rate_hz:g} differs from the env's control rate {1 / env_dt:g} Hz: "
                                      "simulated motion runs at a different speed than its stamps say")
        self.expert_name = p("expert", "none")
        self.expert = self._make_expert(self.expert_name, seed)
        if self.expert is not None and self.mode == "lockstep":
            raise UserError("parameter 'expert': an expert drives the robot in realtime mode only (mode:=realtime)")

        topics = cfg.topics
        self.topic_names = {
            "joint_states": p("joint_states_topic", topics.joint_states),
            "observation": p("observation_topic", topics.observation),
            "command": p("command_topic", cfg.command_topic),
            "episode": p("episode_topic", topics.episode),
        }
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray, String
        from std_srvs.srv import Trigger

        self.pub_js = self.create_publisher(JointState, self.topic_names["joint_states"], STATE)
        self.pub_obs = self.create_publisher(Float64MultiArray, self.topic_names["observation"], STATE)
        self.pub_episode = self.create_publisher(String, self.topic_names["episode"], EVENTS)
        self.pub_clock: Any = self.create_publisher(Clock, "/clock", 10) if self.publish_clock else None
        self._clock_msg: Any = Clock() if self.publish_clock else None
        self.pub_cmd: Any = None
        self.follower: Any = None
        self.interface = p("command_interface", cfg.command.interface)
        if self.interface not in ("forward", "joint_trajectory"):
            raise UserError(f"parameter 'command_interface': sim_node takes 'forward' or 'joint_trajectory', "
                            f"got '{self.interface}'")
        if self.expert is not None:
            # The expert's actions are what a demonstration records: on the forward command topic.
            topic = self.topic_names["command"] if self.interface == "forward" else topics.command
            self.pub_cmd = self.create_publisher(Float64MultiArray, topic, STATE)
        elif self.interface == "joint_trajectory":
            self.follower = self._make_follower(cfg)
            from trajectory_msgs.msg import JointTrajectory

            self.create_subscription(JointTrajectory, self.topic_names["command"], self._on_trajectory, SENSOR)
        else:
            cb = self._on_command_lockstep if self.mode == "lockstep" else self._on_command_realtime
            self.create_subscription(Float64MultiArray, self.topic_names["command"], cb, SENSOR)
        self.create_service(Trigger, "~/reset", self._on_reset)

        # Episode state.
        self.episode = -1  # index of the current episode (0-based)
        self.ended = 0  # episodes ended so far
        self.running = False  # an episode is in progress
        self.obs: Optional[np.ndarray] = None
        self.info: dict[str, Any] = {}
        self.steps = 0
        self.ret = 0.0
        self.command = np.zeros(self.act_dim)
        self.sim_ns = time.time_ns()  # simulated time (publish_clock), starts at the wall clock
        self.done = False
        self.exit_code = 0
        self._started = False
        self._matched_at: Optional[float] = None
        self._timer: Any = None
        period = 1.0 / (self.rate_hz * (self.time_scale if self.mode == "realtime" else 1.0))
        self._start_timer = self.create_timer(0.05, self._try_start, clock=steady_clock())
        self._period = period
        self.get_logger().info(
            f"{env_id}: {self.mode} at {self.rate_hz:g} Hz x{self.time_scale:g}, obs {self.env.observation_space.shape}, "
            f"act {self.act_dim}, expert {self.expert_name}, topics {self.topic_names}")

    # ------------------------------------------------------------------ setup
    def _make_expert(self, name: str, seed: int):
        if name in ("", "none"):
            return None
        if name == "scripted":
            from smiling_ros.envs import scripted_expert

            expert = scripted_expert(self.env, seed=seed)
            if expert is None:
                raise UserError(f"parameter 'expert': task '{self.env.spec.id if self.env.spec else self.env}' has no scripted expert "
                                "(give a policy checkpoint path instead)")
            return expert
        from smiling_ros.learn.policy import load_policy

        obs_dim = int(np.prod(self.env.observation_space.shape or ()))
        return load_policy(name, device="cpu", obs_dim=obs_dim, act_dim=self.act_dim)

    def _make_follower(self, cfg: Any) -> Any:
        from smiling_ros.envs.follower import TrajectoryFollower

        if self.mode != "realtime":
            raise UserError("command interface 'joint_trajectory': sim_node follows trajectories in realtime mode only")
        names, _, _ = self._joint_state(self.env)
        joints = list(cfg.command.joints) or names
        missing = [j for j in joints if j not in names]
        if missing or len(joints) != self.act_dim:
            raise UserError(f"{cfg.path}: command.joints {joints} do not name the task's {self.act_dim} actuated "
                            f"joints {names}")
        self._follow_index = [names.index(j) for j in joints]
        scale = np.asarray(cfg.command.scale or [1.0], np.float64)
        scale = np.broadcast_to(scale, (self.act_dim,)).copy()
        return TrajectoryFollower(joints, cfg.command.meaning, scale, self.low, self.high)

    def _on_trajectory(self, msg) -> None:
        from smiling_ros.ros.commands import trajectory_from_message

        now = time.monotonic()
        names, times, pos, _vel, stamp_ns = trajectory_from_message(msg)
        start = now if stamp_ns == 0 else now + (stamp_ns - self.get_clock().now().nanoseconds) / 1e9
        _, q, _ = self._joint_state(self.env)
        why = self.follower.set(names, times, pos, start, now, q[self._follow_index])
        if why:
            self.get_logger().warning(f"{self.topic_names['command']}: trajectory rejected: {why}",
                                      throttle_duration_sec=2.0)

    def _state_publishers(self) -> list[Any]:
        pubs = [self.pub_js, self.pub_obs, self.pub_episode, self.pub_cmd, self.pub_clock]
        return [pub for pub in pubs if pub is not None]

    def _try_start(self) -> None:
        if self.wait_for > 0:
            counts = [pub.get_subscription_count() for pub in self._state_publishers()]
            if min(counts) < self.wait_for:
                return
            # Matched here; give the subscribers' side of discovery a moment to settle too.
            if self._matched_at is None:
                self._matched_at = time.monotonic()
            if time.monotonic() - self._matched_at < 0.25:
                return
        self._start()

    def _start(self) -> None:
        """First episode: begin it and, in realtime mode, start the control timer."""
        if self._started:
            return
        self._start_timer.cancel()
        self.destroy_timer(self._start_timer)
        self._started = True
        self._begin_episode()
        if self.mode == "realtime":
            self._timer = self.create_timer(self._period, self._tick, clock=steady_clock())

    # ------------------------------------------------------------------ episodes
    def _stamp_ns(self) -> int:
        if self.publish_clock:
            return self.sim_ns
        return self.get_clock().now().nanoseconds

    def _advance_clock(self) -> None:
        self.sim_ns += self.dt_ns
        if self.pub_clock is not None:
            msgs.set_time(self._clock_msg.clock, self.sim_ns)
            self.pub_clock.publish(self._clock_msg)

    def _publish_state(self) -> None:
        stamp = self._stamp_ns()
        names, pos, vel = self._joint_state(self.env)
        self.pub_js.publish(msgs.joint_state(names, pos, vel, stamp_ns=stamp))
        self.pub_obs.publish(msgs.float64_array(np.asarray(self.obs)))

    def _begin_episode(self) -> None:
        self.obs, self.info = self.env.reset()
        self.obs = np.asarray(self.obs, dtype=np.float64).ravel()
        if self.expert is not None:
            from smiling_ros.envs import ScriptedExpert

            if isinstance(self.expert, ScriptedExpert):
                self.expert.reset(self.obs)  # draws this episode's mode
            else:
                self.expert.reset()  # Policy.reset(): forget observation windows / action chunks
        self.episode += 1
        self.steps, self.ret, self.running = 0, 0.0, True
        self.command = np.zeros(self.act_dim)
        if self.follower is not None:
            self.follower.clear()
        self._advance_clock()
        self.pub_episode.publish(msgs.episode_marker("start", self.episode))
        self._publish_state()

    def _end_episode(self, terminated: bool, truncated: bool, reason: str) -> None:
        self.running = False
        self.ended += 1
        success = bool(self.info.get("is_success", False))
        self.pub_episode.publish(msgs.episode_marker(
            "end", self.episode, success=success, steps=self.steps, terminated=bool(terminated),
            truncated=bool(truncated), reason=reason, **{"return": round(self.ret, 6)}))
        self.get_logger().info(f"episode {self.episode} ended ({reason}): {self.steps} steps, "
                               f"return {self.ret:.3f}, success {success}")
        if self.max_episodes and self.ended >= self.max_episodes:
            self._finish()

    def _finish(self) -> None:
        """Stop stepping and exit once subscribers have acknowledged what was published."""
        if self._timer is not None:
            self._timer.cancel()
        for pub in self._state_publishers():
            pub.wait_for_all_acked(rclpy.duration.Duration(seconds=2.0))
        self.done = True

    def _step(self, action: np.ndarray) -> None:
        obs, reward, terminated, truncated, info = self.env.step(action.astype(self.env.action_space.dtype))
        self.obs, self.info = np.asarray(obs, dtype=np.float64).ravel(), info
        self.steps += 1
        self.ret += float(reward)
        self._advance_clock()
        self._publish_state()
        if terminated or truncated:
            self._end_episode(terminated, truncated, "done")

    # ------------------------------------------------------------------ callbacks
    def _tick(self) -> None:
        if self.done:
            return
        if not self.running:
            self._begin_episode()
            return
        if self.expert is not None:
            action = np.asarray(self.expert.act(self.obs), dtype=np.float64).reshape(-1)
            action = np.clip(action, self.low, self.high)
            self.pub_cmd.publish(msgs.float64_array(action))
        elif self.follower is not None:
            _, q, _ = self._joint_state(self.env)
            followed = self.follower.action(time.monotonic(), self._period, q[self._follow_index], 1.0 / self.rate_hz)
            action = self.command if followed is None else followed
        else:
            action = self.command
        self._step(action)
        if not self.running and not self.done:
            self._begin_episode()

    def _valid_command(self, msg) -> Optional[np.ndarray]:
        a = np.asarray(msg.data, dtype=np.float64)
        topic = self.topic_names["command"]
        if a.size != self.act_dim:
            self.get_logger().warning(f"{topic}: command has {a.size} elements, expected {self.act_dim}; ignored",
                                      throttle_duration_sec=2.0)
            return None
        if not np.all(np.isfinite(a)):
            self.get_logger().warning(f"{topic}: command contains NaN/inf; ignored", throttle_duration_sec=2.0)
            return None
        return np.clip(a, self.low, self.high)

    def _on_command_realtime(self, msg) -> None:
        a = self._valid_command(msg)
        if a is not None:
            self.command = a

    def _on_command_lockstep(self, msg) -> None:
        a = self._valid_command(msg)
        if a is None or self.done or not self._started:
            return
        if not self.running:
            self.get_logger().warning(f"episode {self.episode} has ended: command ignored until ~/reset is called",
                                      throttle_duration_sec=2.0)
            return
        self._step(a)

    def _on_reset(self, request, response):
        if self.done:
            response.success, response.message = False, "finished (max_episodes reached)"
            return response
        if not self._started:
            self._start()
        else:
            if self.running:
                self._end_episode(False, True, "reset")
            if not self.done:
                self._begin_episode()
        response.success = not self.done
        response.message = json.dumps({"episode": self.episode, "observation": self.obs.tolist()})
        return response

    def linger(self) -> bool:
        """After SIGINT (see run_node): True while a node named in ``stop_after`` is still in the
        graph, so a trainer stops first and the robot after it."""
        if not self.stop_after:
            return False
        now = time.monotonic()
        if self._linger_until is None:
            self._linger_until = now + LINGER_S
            self.get_logger().info(f"stopping once {', '.join(self.stop_after)} left (at most {LINGER_S:g} s)")
        present = set(self.get_node_names()) & set(self.stop_after)
        return bool(present) and now < self._linger_until

    def close(self) -> None:
        self.env.close()


def main(argv: Optional[list[str]] = None) -> int:
    """Console script ``sim_node`` (also ``ros2 run smiling_ros sim_node``)."""
    from smiling_ros.learn.runtime import limit_threads

    limit_threads()
    return run_node(NODE_NAME, SimNode, argv)


if __name__ == "__main__":
    sys.exit(main())
