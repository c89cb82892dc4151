"""Reinforcement learning on a language-specified reward (``embodied rl``).

One instruction fixes the task of a run (:class:`embodied.envs.FixedTask`: every episode's
scene contains what it names). The reward is either the env's own (``true``) or the
foundation model's score of each step for that instruction (``learned``: every env's step scored in
one batch, :class:`embodied.policies.vec_reward.VecLearnedReward`); stable-baselines3 trains on it. The policy sees
the state vector only, normalised by running statistics, with the instruction's object and zone
moved to the first slots (``task_first``, :func:`embodied.envs.task_first`: the scene's slot order
is random, and the policy gets no other word of which object the fixed instruction means), and with ``egocentric`` the
scene's positions relative to the fingertip (:func:`state_view` serves training and evaluation). Evaluation always uses the true
success, on the fixed evaluation seeds (never a training seed), with a 95% Wilson interval
(:mod:`embodied.evaluate`); when a reward model is at hand, the evaluation episodes are also
scored by it and episodes it believes solved but that are not are listed (reward hacking).

Each env of a run is built as::

    make(env, terminate_on_success=... (true reward only)) -> FixedTask(instruction) -> reward source (learned: RewardTap)
        -> algorithm's env wrappers (cost penalty; ppo --squash: tanh of the actions)
        -> StateView (task_first, keep-out lidar, egocentric) -> StateOnly -> Monitor

and the vector of them as ``DummyVecEnv -> reward source (learned: VecLearnedReward) -> VecNormalize``. With
``--terminate-on-success`` a learned-reward run ends its episodes where the model believes the task solved
(``--success-threshold``), so nothing of the true success reaches its training.

Algorithms are classes in :data:`ALGORITHMS`, registered with ``@register_algorithm``. Each
builds its SB3 model and may add env wrappers (after the reward source) and training
callbacks. With ``--cost-limit C`` an algorithm runs as its Lagrangian variant (PPO-Lagrangian for
``ppo``): a wrapper subtracts ``multiplier x info["cost"]`` from the reward and a callback raises or
lowers the multiplier from the episode costs at each rollout's end (:class:`LagrangeMultiplier`); with
``--cost-critic`` the reward stays the env's and a second critic's cost advantage is weighed into the policy's
(:mod:`embodied.rl_cost`).
Reward sources are classes in :data:`REWARDS` (``@register_reward``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import numpy as np

from embodied.registry import Registry
from embodied.errors import ConfigError

if TYPE_CHECKING:
    import gymnasium as gym
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import VecEnv

GAMMA = 0.99
"""Discount of every algorithm's learner, of the reward normaliser's returns and of a potential-shaped reward."""


@dataclass(frozen=True)
class RLSpec:
    """Everything one RL run needs (the CLI's ``RLConfig`` less its output options)."""

    env_id: str
    instruction: str
    reward: str = "learned"
    algo: str = "ppo"
    steps: int = 100_000
    reward_ckpt: str | None = None
    ensemble: tuple[str, ...] = ()
    """More reward models scored beside ``reward_ckpt`` (:class:`embodied.policies.RewardEnsemble`)."""
    disagreement: float = 0.0
    """With ``ensemble``: the learned reward is the models' mean less this times their spread."""
    success_disagreement: float = 0.0
    """With ``ensemble``: the learned success probability is the models' mean less this times their spread."""
    n_envs: int = 8
    episodes: int = 50
    seed: int = 0
    terminate_on_success: bool = False
    """End training episodes where the task is solved: for the true reward where the env says so, for the learned reward
    where the model's success probability exceeds ``success_threshold`` (the run never sees the true success)."""
    success_threshold: float = 0.5
    success_bonus: float | None = None
    """Learned reward with ``terminate_on_success``: the success bonus of the model's training data, paid once where the
    model's success ends an episode instead of in part on every step near it (:func:`embodied.policies.reward.settle_success`)."""
    reward_ceiling: float | None = None
    """With ``success_bonus``: the most the learned reward's dense part pays a step (the env's bound; the suite's: 0)."""
    shaping: float = 0.0
    """> 0: the reward's dense part (the env's, or the learned reward's) is paid as a potential of this scale
    (:mod:`embodied.policies.shaping`); 0: as is."""
    task_first: bool = True
    egocentric: bool = False
    """The policy sees the scene's positions relative to the fingertip (:func:`embodied.envs.egocentric`)."""
    lidar: bool = False
    """The policy also sees Safety-Gymnasium's hazard lidar of the keep-out zones (:func:`embodied.envs.keep_out_lidar`)."""
    device: str | None = None
    threads: int = 1
    """Torch CPU threads (0: torch's default)."""
    cost_limit: float | None = None
    lagrange_lr: float = 0.05
    lagrange_optimizer: str = "sgd"
    cost_limit_start: float | None = None
    """Where the limit starts: it moves linearly to ``cost_limit`` over the first ``cost_limit_anneal`` of the steps."""
    cost_limit_anneal: float = 0.5
    cost_margin: float = 0.0
    """With a cost limit: the Lagrangian counts a cost wherever the state is within this of breaking a constraint the state
    shows (m, or m/s for speeds; see :func:`cost_penalty`)."""
    cost_critic: bool = False
    """ppo with a cost limit: a second critic learns the cost, and the policy's advantage weighs the cost's against the
    reward's (:mod:`embodied.rl_cost`), instead of one critic on the penalised reward."""
    log_std_init: float = 0.0
    net_arch: tuple[int, ...] = ()
    """Widths of the hidden layers of the policy's actor and critic alike; () for the algorithm's default
    (:attr:`Algorithm.default_net_arch`)."""
    ent_coef: float = 0.0
    """ppo: weight of the entropy bonus in the loss (SB3's ent_coef)."""
    squash: bool = False
    """ppo: the policy's Gaussian acts through tanh (:func:`squash_actions`) instead of being clipped to the bounds."""
    constraints: tuple[Any, ...] = ()
    """Constraint specs (:mod:`embodied.envs.constraints`) turned on in every env of the run, besides the env's own."""

    def env_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``make`` for this run's envs (its extra constraints)."""
        return {"constraints": tuple(self.constraints)} if self.constraints else {}


# ---------------------------------------------------------------------------- the Lagrange multiplier
class LagrangeMultiplier:
    """PPO-Lagrangian's multiplier: gradient ascent on ``lambda * (mean episode cost - limit)``, kept >= 0.

    The :class:`CostPenalty` wrappers of a run's envs report each finished episode's total cost
    here; :meth:`update` (at the end of every rollout) takes one ascent step from the mean of those
    costs minus the limit (the gradient), so the penalty grows while episodes cost too much and
    fades once they do not. ``optimizer="sgd"`` steps ``lr`` times the gradient (a step in units of
    episode cost); ``"adam"`` (OmniSafe's choice) divides by a running RMS of the gradient, so each
    step is about ``lr`` whatever the cost's scale and the multiplier cannot leap ahead of a policy
    that is still learning the task.

    ``start`` (with ``anneal``) makes the limit a curriculum: at training progress ``p`` (0 at the first
    step, 1 at the last) the multiplier follows ``limit_at(p)``, which moves in a straight line from
    ``start`` to ``limit`` while ``p < anneal`` and is ``limit`` after. A loose start lets the policy
    learn the task before the constraint bites (under a speed limit that exploration noise breaks,
    a penalty from the first step teaches the policy to stand still).
    """

    OPTIMIZERS = ("sgd", "adam")
    BETAS = (0.9, 0.999)
    """Adam's decay rates of the gradient's running mean and mean square."""

    def __init__(self, limit: float, lr: float = 0.05, value: float = 0.0, optimizer: str = "sgd",
                 start: float | None = None, anneal: float = 0.5) -> None:
        if limit < 0 or lr <= 0:
            raise ConfigError(f"need --cost-limit >= 0 and --lagrange-lr > 0, got {limit} and {lr}")
        if optimizer not in self.OPTIMIZERS:
            raise ConfigError(f"unknown --lagrange-optimizer {optimizer!r}; use one of {', '.join(self.OPTIMIZERS)}")
        if start is not None and start < 0:
            raise ConfigError(f"need --cost-limit-start >= 0, got {start}")
        if not 0 < anneal <= 1:
            raise ConfigError(f"need 0 < --cost-limit-anneal <= 1 (a fraction of the steps), got {anneal}")
        self.limit, self.lr, self.value, self.optimizer = float(limit), float(lr), float(value), optimizer
        self.start, self.anneal = (None if start is None else float(start)), float(anneal)
        self._costs: list[float] = []
        self._m = self._v = 0.0  # Adam's moment estimates
        self.history: list[dict[str, float]] = []

    def record(self, episode_cost: float) -> None:
        self._costs.append(float(episode_cost))

    def limit_at(self, progress: float) -> float:
        """The limit at training progress ``progress`` (0 = start, 1 = end of training)."""
        if self.start is None:
            return self.limit
        f = min(max(progress / self.anneal, 0.0), 1.0)
        return self.start + f * (self.limit - self.start)

    def update(self, progress: float = 1.0) -> None:
        """One ascent step from the episodes finished since the last one (none finished: no step), against the limit at
        training progress ``progress`` (see :meth:`limit_at`)."""
        if not self._costs:
            return
        mean = float(np.mean(self._costs))
        limit = self.limit_at(progress)
        grad = mean - limit
        if self.optimizer == "adam":
            b1, b2 = self.BETAS
            t = len(self.history) + 1
            self._m = b1 * self._m + (1 - b1) * grad
            self._v = b2 * self._v + (1 - b2) * grad * grad
            step = self.lr * (self._m / (1 - b1**t)) / (np.sqrt(self._v / (1 - b2**t)) + 1e-8)
        else:
            step = self.lr * grad
        self.value = max(0.0, self.value + float(step))
        self.history.append({"episodes": len(self._costs), "mean_episode_cost": mean, "limit": limit, "multiplier": self.value})
        self._costs = []


def multiplier_of(spec: RLSpec) -> LagrangeMultiplier:
    """The multiplier of a run with a cost limit (its constructor checks the spec's Lagrangian options)."""
    assert spec.cost_limit is not None
    return LagrangeMultiplier(spec.cost_limit, spec.lagrange_lr, optimizer=spec.lagrange_optimizer,
                              start=spec.cost_limit_start, anneal=spec.cost_limit_anneal)


def cost_penalty(env: "gym.Env", multiplier: LagrangeMultiplier, penalise: bool = True, margin: float = 0.0) -> "gym.Env":
    """``env`` with reward ``(r - lambda * cost) / (1 + lambda)`` (OmniSafe's scaling); the raw reward stays in
    ``info["unpenalized_reward"]`` and each finished episode's cost goes to ``multiplier`` (also one that a wrapper
    outside ends by resetting the env before it terminates, as :class:`~embodied.policies.vec_reward.VecLearnedReward`
    does on the model's success). ``penalise=False`` leaves
    the reward alone (the cost critic's form weighs the cost in the advantage instead) and only reports the costs.

    The cost the Lagrangian sees is ``info["lagrangian_cost"]``: the env's ``info["cost"]``, or with ``margin`` > 0 a
    conservative one that also counts every step whose state lies within ``margin`` (m, or m/s for speeds) of breaking a
    constraint the state shows (keep-out zones, speed limit, workspace: :func:`embodied.envs.constraints.state_cost`).
    Evaluation and the logged costs stay the env's own."""
    import gymnasium as gym

    from embodied.envs.constraints import state_cost

    near = state_cost(env.unwrapped.constraints, margin) if margin > 0 else None

    class CostPenalty(gym.Wrapper):
        steps = 0

        def reset(self, **kwargs: Any) -> Any:
            if self.steps:  # an episode ended from outside (a learned reward's success ends it by reset): it counts too
                multiplier.record(self.episode_cost)
            self.episode_cost, self.steps = 0.0, 0
            return self.env.reset(**kwargs)

        def step(self, action: Any) -> Any:
            obs, reward, terminated, truncated, info = self.env.step(action)
            cost = float(info.get("cost", 0.0))
            if near is not None:
                s = np.asarray(obs["state"], dtype=np.float64)
                cost = max(cost, float(near(s, s[None, None])[0, 0]))
            self.episode_cost += cost
            self.steps += 1
            if terminated or truncated:
                multiplier.record(self.episode_cost)
                self.steps = 0
            lam = multiplier.value if penalise else 0.0
            return obs, (float(reward) - lam * cost) / (1.0 + lam), terminated, truncated, {
                **info, "unpenalized_reward": reward, "lagrangian_cost": cost}

    return CostPenalty(env)


SQUASH_BOUND = 5.0
"""Bound of the squashed policy's raw actions (SB3 needs finite bounds): tanh(5) is 0.9999, so nothing a policy could
want lies beyond it."""


def squash_actions(env: "gym.Env") -> "gym.Env":
    """``env`` taking actions ``u`` in [-SQUASH_BOUND, SQUASH_BOUND] and acting with ``tanh(u)`` scaled to its bounds.

    PPO's Gaussian is clipped to the action bounds by default, and a task rewarded for speed pushes its mean far past
    them (on PointReach with keep-out zones, 2/3 of the action components' means lay beyond 1 and half beyond 2 after
    1M steps): every sample is then clipped to the same corner, so no change of the mean changes what the env sees,
    and a cost that asks for a detour or a slower pace has no gradient to act through. Through tanh every change of
    the mean moves the action.
    """
    import gymnasium as gym

    low = np.asarray(env.action_space.low, dtype=np.float64)
    high = np.asarray(env.action_space.high, dtype=np.float64)

    class SquashedActions(gym.ActionWrapper):
        def __init__(self, inner: "gym.Env") -> None:
            super().__init__(inner)
            self.action_space = gym.spaces.Box(-SQUASH_BOUND, SQUASH_BOUND, shape=inner.action_space.shape, dtype=np.float32)

        def action(self, action: Any) -> np.ndarray:
            return squashed(action, low, high)

    return SquashedActions(env)


def squashed(u: Any, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """``tanh(u)`` mapped from (-1, 1) onto ``[low, high]`` (float32)."""
    return (low + (np.tanh(np.asarray(u, dtype=np.float64)) + 1.0) * 0.5 * (high - low)).astype(np.float32)


# ---------------------------------------------------------------------------- reward sources
class RewardSource:
    """Where a run's reward comes from: a wrapper of each env (after the task is fixed) and one of the vector of envs."""

    env_ends_on_success: ClassVar[bool] = True
    """With ``terminate_on_success``, whether the env's own success ends episodes (False: the source ends them)."""

    def wrap(self, env: "gym.Env", spec: RLSpec, reward_model: Any) -> "gym.Env":
        """One training env with this source's per-env wrapper (none by default)."""
        return env

    def wrap_vec(self, venv: "VecEnv", spec: RLSpec, reward_model: Any) -> "VecEnv":
        """The vector of training envs with this source's wrapper (none by default)."""
        return venv


REWARDS: Registry[type[RewardSource]] = Registry("reward")
register_reward = REWARDS.register
"""Class decorator: ``@register_reward("name")`` adds a :class:`RewardSource`."""


@register_reward("true")
class TrueReward(RewardSource):
    """The env's own reward (with ``shaping``, each env tells its dense part: :class:`embodied.policies.shaping.DenseTap`)."""

    def wrap(self, env: "gym.Env", spec: RLSpec, reward_model: Any) -> "gym.Env":
        from embodied.policies.shaping import DenseTap

        return DenseTap(env) if spec.shaping else env


@register_reward("learned")
class LearnedRewardSource(RewardSource):
    """The model's score of each step for the run's instruction (true reward in ``info``), all envs scored in one batch
    per step (:class:`embodied.policies.vec_reward.VecLearnedReward`). With ``terminate_on_success`` the model's success
    ends episodes, not the env's."""

    env_ends_on_success = False

    def wrap(self, env: "gym.Env", spec: RLSpec, reward_model: Any) -> "gym.Env":
        from embodied.policies.vec_reward import RewardTap

        if reward_model is None:
            raise ConfigError("--reward learned needs the reward model: --ckpt runs/R (a run or checkpoint folder)")
        return RewardTap(env)

    def wrap_vec(self, venv: "VecEnv", spec: RLSpec, reward_model: Any) -> "VecEnv":
        from embodied.policies.vec_reward import VecLearnedReward

        return VecLearnedReward(venv, reward_model, spec.instruction,
                                end_on_success=spec.success_threshold if spec.terminate_on_success else None,
                                success_bonus=spec.success_bonus, reward_ceiling=spec.reward_ceiling)


# ---------------------------------------------------------------------------- algorithms
class Algorithm:
    """An RL algorithm of stable-baselines3, its defaults, env wrappers and callbacks.

    With ``spec.cost_limit`` set it becomes its Lagrangian variant (PPO-Lagrangian for ``ppo``):
    every env's reward is penalised by the run's :class:`LagrangeMultiplier` times the step's
    cost, and the multiplier is updated from the episode costs at the end of every rollout.
    """

    name: str
    default_envs: int = 8
    default_net_arch: tuple[int, ...] = (64, 64)
    """Hidden widths of actor and critic unless the spec names them (stable-baselines3's defaults)."""

    def __init__(self) -> None:
        self.multiplier: LagrangeMultiplier | None = None

    def constrain(self, spec: RLSpec) -> None:
        """Set up the run's multiplier when the spec has a cost limit."""
        self.multiplier = None if spec.cost_limit is None else multiplier_of(spec)

    def build(self, venv: "VecEnv", spec: RLSpec, device: str) -> "BaseAlgorithm":
        """The SB3 model that will learn on ``venv``."""
        raise NotImplementedError

    def env_wrappers(self, spec: RLSpec) -> list[Callable[["gym.Env"], "gym.Env"]]:
        """Wrappers applied after the reward source: the cost penalty under a cost limit, else none."""
        m = self.multiplier
        return [] if m is None else [lambda env: cost_penalty(env, m, penalise=not spec.cost_critic, margin=spec.cost_margin)]

    def callbacks(self, spec: RLSpec) -> list["BaseCallback"]:
        """Extra SB3 callbacks: the multiplier's update at each rollout's end under a cost limit, else none."""
        from stable_baselines3.common.callbacks import BaseCallback

        m = self.multiplier
        if m is None:
            return []

        class LagrangeUpdate(BaseCallback):
            def _on_step(self) -> bool:
                return True

            def _on_rollout_end(self) -> None:
                m.update(progress=self.num_timesteps / spec.steps)

        return [LagrangeUpdate()]


ALGORITHMS: Registry[type[Algorithm]] = Registry("algorithm")
register_algorithm = ALGORITHMS.register
"""Class decorator: ``@register_algorithm("name")`` adds an :class:`Algorithm`."""


@register_algorithm("ppo")
class PPOAlgorithm(Algorithm):
    """PPO: 8 envs x 256 steps per rollout, 10 epochs of minibatches of 256, clipped surrogate; with ``spec.squash``
    the Gaussian acts through tanh (:func:`squash_actions`, after the cost penalty)."""

    def env_wrappers(self, spec: RLSpec) -> list[Callable[["gym.Env"], "gym.Env"]]:
        return super().env_wrappers(spec) + ([squash_actions] if spec.squash else [])

    def build(self, venv: "VecEnv", spec: RLSpec, device: str) -> "BaseAlgorithm":
        from stable_baselines3 import PPO

        arch = list(spec.net_arch or self.default_net_arch)
        kwargs = dict(n_steps=256, batch_size=256, n_epochs=10, learning_rate=3e-4, gamma=GAMMA, gae_lambda=0.95, ent_coef=spec.ent_coef,
                      seed=spec.seed, device=device, verbose=0, policy_kwargs={"log_std_init": spec.log_std_init, "net_arch": arch})
        if spec.cost_critic and self.multiplier is not None:
            from embodied.rl_cost import CostRecorder, lagrangian_ppo

            m = self.multiplier
            return lagrangian_ppo(lambda: m.value, arch, policy="MlpPolicy", env=CostRecorder(venv), **kwargs)
        return PPO("MlpPolicy", venv, **kwargs)


@register_algorithm("sac")
class SACAlgorithm(Algorithm):
    """SAC: one env, a gradient step every 2 env steps after 1000 random ones."""

    default_envs = 1
    default_net_arch = (256, 256)

    def build(self, venv: "VecEnv", spec: RLSpec, device: str) -> "BaseAlgorithm":
        from stable_baselines3 import SAC

        return SAC("MlpPolicy", venv, learning_starts=1000, train_freq=2, gradient_steps=1, gamma=GAMMA,
                   seed=spec.seed, device=device, verbose=0, policy_kwargs={"net_arch": list(spec.net_arch or self.default_net_arch)})


# ---------------------------------------------------------------------------- the run
def check_spec(spec: RLSpec, need_ckpt: bool = True) -> None:
    """Every user-input error of a run, before anything heavy loads (one line each, exit code 2)."""
    from embodied.envs import FixedTask, entry, make

    entry(spec.env_id)
    REWARDS[spec.reward]
    ALGORITHMS[spec.algo]
    if not spec.instruction.strip():
        raise ConfigError('say what the policy should do: --instruction "push the red cube to the right"')
    if spec.cost_limit is not None:
        multiplier_of(spec)  # its own checks, one line each
    elif spec.cost_limit_start is not None:
        raise ConfigError("--cost-limit-start needs the limit it anneals to: add --cost-limit C")
    if spec.cost_margin < 0 or (spec.cost_margin > 0 and spec.cost_limit is None):
        raise ConfigError(f"--cost-margin must be >= 0 and goes with --cost-limit C, got {spec.cost_margin}")
    if spec.cost_critic and (spec.cost_limit is None or spec.algo != "ppo"):
        raise ConfigError("--cost-critic is PPO-Lagrangian's: use it with --algo ppo and --cost-limit C")
    if spec.steps < 1 or spec.episodes < 1 or spec.n_envs < 1:
        raise ConfigError(f"--steps, --episodes and --envs must be >= 1, got {spec.steps}, {spec.episodes}, {spec.n_envs}")
    if spec.ent_coef < 0:
        raise ConfigError(f"--ent-coef must be >= 0, got {spec.ent_coef}")
    if spec.squash and spec.algo != "ppo":
        raise ConfigError(f"--squash is for ppo; {spec.algo} squashes its actions already (drop --squash)")
    if spec.net_arch and min(spec.net_arch) < 1:
        raise ConfigError(f"--net-arch takes one width >= 1 per hidden layer, e.g. --net-arch 256 256; got {list(spec.net_arch)}")
    if spec.threads < 0:
        raise ConfigError(f"--threads must be >= 0 (0: torch's default), got {spec.threads}")
    if not 0.0 < spec.success_threshold < 1.0:
        raise ConfigError(f"--success-threshold is a probability in (0, 1), got {spec.success_threshold}")
    if spec.success_bonus is not None and (spec.reward != "learned" or not spec.terminate_on_success or not spec.success_bonus >= 0):
        raise ConfigError(f"--success-bonus ({spec.success_bonus}) settles a learned reward's success: use it with --reward learned "
                          "--terminate-on-success, and >= 0")
    if spec.reward_ceiling is not None and (spec.success_bonus is None or not np.isfinite(spec.reward_ceiling)):
        raise ConfigError(f"--reward-ceiling ({spec.reward_ceiling}) bounds the dense part of a settled learned reward: use it with "
                          "--success-bonus, and a finite number (the suite's envs: 0)")
    if not (np.isfinite(spec.shaping) and spec.shaping >= 0):
        raise ConfigError(f"--shaping is the scale of the dense reward's potential: a finite number >= 0 (0: no shaping), got {spec.shaping}")
    if spec.reward == "learned" and need_ckpt and not spec.reward_ckpt:
        raise ConfigError("--reward learned needs the reward model: --ckpt runs/R (a run or checkpoint folder)")
    for ckpt in (spec.reward_ckpt, *spec.ensemble):
        if ckpt and not Path(ckpt).exists():
            raise ConfigError(f"no checkpoint at {ckpt}; train one with `embodied train --out {ckpt}`")
    if spec.ensemble and (spec.reward != "learned" or not spec.reward_ckpt):
        raise ConfigError("--ensemble adds reward models beside --ckpt: use it with --reward learned --ckpt runs/R")
    for flag, k in (("--disagreement", spec.disagreement), ("--success-disagreement", spec.success_disagreement)):
        if not k >= 0 or (k > 0 and not spec.ensemble):
            raise ConfigError(f"{flag} ({k}) weighs the spread of an ensemble: >= 0, with --ensemble runs/R2 ...")
    env = make(spec.env_id, **spec.env_kwargs())
    try:
        FixedTask(env, spec.instruction)  # a malformed instruction or the wrong task family fails here
    finally:
        env.close()


def make_env(spec: RLSpec, reward_model: Any, algorithm: Algorithm, monitor: bool = True) -> "gym.Env":
    """One training env of the run (see the module doc for the order of wrappers)."""
    from stable_baselines3.common.monitor import Monitor

    from embodied.envs import FixedTask, StateOnly, StateView, make

    source = REWARDS[spec.reward]()
    ends = spec.terminate_on_success and source.env_ends_on_success
    env = FixedTask(make(spec.env_id, terminate_on_success=ends, **spec.env_kwargs()), spec.instruction)
    env = source.wrap(env, spec, reward_model)
    for wrap in algorithm.env_wrappers(spec):
        env = wrap(env)
    view = state_view(spec)
    if view is not None:
        env = StateView(env, view)
    env = StateOnly(env)
    return Monitor(env) if monitor else env


class StatePolicy:
    """A trained SB3 model as a ``predict``-protocol policy on the suite's dict observations (state only).

    ``view`` maps the state vectors (N, S) to what the model was trained on (e.g. :func:`embodied.envs.task_first`
    for the run's task) before ``normalize``.
    """

    def __init__(self, model: "BaseAlgorithm", normalize: Callable[[np.ndarray], np.ndarray],
                 view: Callable[[np.ndarray], np.ndarray] | None = None,
                 act: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self.model, self.normalize, self.view, self.act = model, normalize, view, act

    def reset(self) -> None:
        """The policy keeps no state between steps."""

    def predict(self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = True) -> tuple[np.ndarray, None]:
        s = np.asarray(observation["state"], dtype=np.float32)
        batched = s.ndim == 2
        s = s if batched else s[None]
        a, _ = self.model.predict(self.normalize(self.view(s) if self.view else s), deterministic=True)
        a = self.act(a) if self.act else a
        return (a if batched else a[0]), None

    def mean_actions(self, states: np.ndarray) -> np.ndarray | None:
        """The Gaussian's mean (N, A) for raw state vectors (N, S), before any clipping or squashing; None for a model
        without one (SAC's actor)."""
        import torch

        policy = self.model.policy
        if not hasattr(policy, "get_distribution"):
            return None
        obs = self.normalize(self.view(states) if self.view else states)
        with torch.no_grad():
            dist = policy.get_distribution(torch.as_tensor(np.asarray(obs, dtype=np.float32), device=policy.device))
        return dist.distribution.mean.cpu().numpy()


FLAT_SLOPE = 0.1
"""An action component is saturated where the env's action moves less than this per unit of the policy's mean."""


def saturated(mean: np.ndarray, low: np.ndarray, high: np.ndarray, squash: bool) -> np.ndarray:
    """Which components of the policy's means (N, A) are saturated (bool (N, A)): clipped, outside ``[low, high]``,
    where the env's action does not move with the mean at all; squashed, where tanh's slope is below
    :data:`FLAT_SLOPE` (``|u| > 1.82``). A cost reaches the policy only through the components that are not."""
    if squash:
        return 1.0 - np.tanh(mean) ** 2 < FLAT_SLOPE
    return (mean < low) | (mean > high)


def _progress_callback(log: list[dict[str, Any]], every: int, progress: Callable[[str], None] | None = None) -> "BaseCallback":
    """An SB3 callback recording (and passing to ``progress``), every ``every`` env steps, the true success, true return
    and cost of the episodes finished since. The true return is the env's own reward: not the learned one, and not
    the Lagrangian's penalised one."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Progress(BaseCallback):
        def _on_training_start(self) -> None:
            n = self.training_env.num_envs
            self.ret, self.cost, self.done_ok, self.done_ret, self.done_cost, self.last = np.zeros(n), np.zeros(n), [], [], [], 0

        def _on_step(self) -> bool:
            infos, dones = self.locals["infos"], self.locals["dones"]
            env = self.training_env  # a VecNormalize: its rewards are normalised, the original ones are the env's
            raw = env.get_original_reward() if hasattr(env, "get_original_reward") else self.locals["rewards"]
            for i, info in enumerate(infos):
                self.ret[i] += float(info.get("true_reward", info.get("unpenalized_reward", raw[i])))
                self.cost[i] += float(info.get("cost", 0.0))
                if dones[i]:
                    self.done_ok.append(bool(info.get("is_success", False)))
                    self.done_ret.append(self.ret[i])
                    self.done_cost.append(self.cost[i])
                    self.ret[i] = self.cost[i] = 0.0
            if self.num_timesteps - self.last >= every and self.done_ok:
                log.append({"steps": self.num_timesteps, "episodes": len(self.done_ok), "true_success": float(np.mean(self.done_ok)),
                            "true_return": float(np.mean(self.done_ret)), "mean_episode_cost": float(np.mean(self.done_cost))})
                if progress:
                    r = log[-1]
                    progress(f"{r['steps']} steps: {r['episodes']} episodes, true success {r['true_success']:.2f}, "
                             f"true return {r['true_return']:.1f}, episode cost {r['mean_episode_cost']:.2f}")
                self.done_ok, self.done_ret, self.done_cost, self.last = [], [], [], self.num_timesteps
            return True

    return Progress()


def settled_bonus(spec: RLSpec, model_bonus: float) -> float | None:
    """The success bonus a learned-reward run settles: the one given (``--success-bonus``), else, where the model's success
    ends episodes, the bonus its reward head learned without (``ModelConfig.success_bonus``, 0: none)."""
    if spec.success_bonus is not None or spec.reward != "learned" or not spec.terminate_on_success or not model_bonus:
        return spec.success_bonus
    return float(model_bonus)


def train_rl(spec: RLSpec, out: str | Path, progress: Callable[[str], None] | None = None, reward_model: Any = None) -> dict[str, Any]:
    """Train on the spec's reward, evaluate with the true success, write ``rl.json`` and the policy's weights into ``out``.

    ``reward_model`` (a :class:`~embodied.policies.RewardModel`) replaces loading ``spec.reward_ckpt``
    (e.g. one whose instruction embeddings come from a stored table on a machine without the encoder). Torch runs
    on ``spec.threads`` CPU threads meanwhile (the caller's setting is restored after).
    """
    import torch

    before = torch.get_num_threads()
    if spec.threads:
        torch.set_num_threads(spec.threads)
    try:
        return _train_rl(spec, out, progress, reward_model)
    finally:
        torch.set_num_threads(before)


def _train_rl(spec: RLSpec, out: str | Path, progress: Callable[[str], None] | None, reward_model: Any) -> dict[str, Any]:
    import torch
    from safetensors.torch import save_file
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    check_spec(spec, need_ckpt=reward_model is None)
    algorithm = ALGORITHMS[spec.algo]()
    algorithm.constrain(spec)
    device = spec.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if reward_model is None and spec.reward_ckpt:
        from embodied.policies import RewardEnsemble, RewardModel

        reward_model = (RewardEnsemble.load([spec.reward_ckpt, *spec.ensemble], spec.disagreement, device=device,
                                                           success_disagreement=spec.success_disagreement) if spec.ensemble
                        else RewardModel.load(spec.reward_ckpt, device=device))
    if reward_model is not None:
        if reward_model.model.cfg.pixels:
            raise ConfigError(f"{spec.reward_ckpt} scores pixels; `embodied rl` runs state-only envs: use a state-only model")
        spec = replace(spec, success_bonus=settled_bonus(spec, reward_model.model.cfg.success_bonus))
    venv = DummyVecEnv([lambda: make_env(spec, reward_model, algorithm) for _ in range(spec.n_envs)])
    venv.seed(spec.seed)
    venv = REWARDS[spec.reward]().wrap_vec(venv, spec, reward_model)
    if spec.shaping:
        from embodied.policies.shaping import VecPotentialShaping

        venv = VecPotentialShaping(venv, spec.shaping, GAMMA)
    venv = VecNormalize(venv, norm_obs=True, norm_reward=True, gamma=GAMMA)
    model = algorithm.build(venv, spec, device)
    curve: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    model.learn(spec.steps, callback=[_progress_callback(curve, max(spec.steps // 20, 1), progress), *algorithm.callbacks(spec)])
    train_s = time.perf_counter() - t0
    if progress:
        progress(f"trained {spec.algo} on the {spec.reward} reward for {spec.steps} steps in {train_s:.0f} s; evaluating")
    venv.training = False
    result = {"spec": {**asdict(spec), "constraints": [c.describe() for c in spec.constraints],
                       "constraint_specs": [c.to_dict() for c in spec.constraints]}, "device": device,
              "torch_threads": torch.get_num_threads(), "train_seconds": train_s, "env_steps_per_s": spec.steps / max(train_s, 1e-9),
              "curve": curve, **evaluate_rl(spec, StatePolicy(model, venv.normalize_obs, state_view(spec), action_view(spec, venv.unwrapped.envs[0].unwrapped.action_space)), reward_model)}
    if algorithm.multiplier is not None:
        m = algorithm.multiplier
        result["lagrange"] = {"cost_critic": spec.cost_critic, "cost_margin": spec.cost_margin, "cost_limit": m.limit, "cost_limit_start": m.start, "cost_limit_anneal": m.anneal, "lr": m.lr, "optimizer": m.optimizer, "final_multiplier": m.value, "updates": m.history}
    venv.close()
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.policy.state_dict().items()}, str(folder / "policy.safetensors"))
    rms = venv.obs_rms
    result["obs_normalizer"] = {"mean": rms.mean.tolist(), "var": rms.var.tolist(), "clip": float(venv.clip_obs), "epsilon": float(venv.epsilon)}
    tmp = folder / "rl.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(folder / "rl.json")
    result["out"] = str(folder)
    return result


def load_rl_policy(folder: str | Path, device: str = "cpu") -> tuple[StatePolicy, RLSpec]:
    """The policy an ``embodied rl`` run saved in ``folder`` (``rl.json`` + ``policy.safetensors``), with its spec.

    Rebuilt as it acted in the run's evaluation: the same network, observation normaliser, state view and action map,
    so :func:`evaluate_rl` on it gives the run's ``eval`` again. Nothing is unpickled: the weights go through
    :func:`embodied.checkpoint.load_tensors` (a pickle or a tampered file is a one-line error)."""
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from embodied.checkpoint import load_tensors, read_json
    from embodied.envs.constraints import constraint_from

    folder = Path(folder)
    if not (folder / "rl.json").is_file():
        raise ConfigError(f"no rl.json in {folder}: give the --out folder of an `embodied rl` run")
    record = read_json(folder / "rl.json")
    try:
        fields = {k: v for k, v in record["spec"].items() if k in RLSpec.__dataclass_fields__}
        fields["constraints"] = tuple(constraint_from(c) for c in record["spec"].get("constraint_specs", []))
        fields["net_arch"] = tuple(fields.get("net_arch", ()))
        spec = RLSpec(**{**fields, "device": device})
        norm = record["obs_normalizer"]
        mean, var = np.asarray(norm["mean"], dtype=np.float64), np.asarray(norm["var"], dtype=np.float64)
        clip, eps = float(norm["clip"]), float(norm["epsilon"])
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{folder / 'rl.json'} is not an `embodied rl` record ({type(e).__name__}: {e}); rerun `embodied rl --out {folder}`") from None
    if spec.constraints == () and record["spec"].get("constraints"):
        raise ConfigError(f"{folder / 'rl.json'} names constraints without their specs (an older run); rerun `embodied rl --out {folder}`")
    algorithm = ALGORITHMS[spec.algo]()
    algorithm.constrain(spec)
    # the network's spaces do not depend on where the reward came from: a learned-reward run rebuilds without its model
    shell = replace(spec, reward="true")
    venv = DummyVecEnv([lambda: make_env(shell, None, algorithm, monitor=False)])
    try:
        model = algorithm.build(venv, spec, device)
        weights = load_tensors(folder / "policy.safetensors", map_location=device)
        try:
            model.policy.load_state_dict(weights)
        except RuntimeError as e:
            raise ConfigError(f"{folder / 'policy.safetensors'} does not fit the network rl.json describes ({str(e).splitlines()[0]})") from None
        space = venv.envs[0].unwrapped.action_space
        normalizer = VecNormalize(venv, training=False, norm_reward=False, clip_obs=clip, epsilon=eps)  # the run's own normalisation
        normalizer.obs_rms.mean, normalizer.obs_rms.var = mean, var
    finally:
        venv.close()
    return StatePolicy(model, normalizer.normalize_obs, state_view(spec), action_view(spec, space)), spec


def state_view(spec: RLSpec) -> Callable[[np.ndarray], np.ndarray] | None:
    """What the run's policy sees of state vectors (N, S), in training and evaluation alike: with ``task_first``, the
    named object and zone in the first slots; with ``egocentric``, the scene's positions relative to the fingertip; with
    ``lidar``, the keep-out zones' lidar readings appended.
    None when it sees the state as it is."""
    from embodied.envs import egocentric, task_first, with_keep_out_lidar
    from embodied.envs.instructions import parse_instruction

    views: list[Callable[[np.ndarray], np.ndarray]] = []
    if spec.task_first:
        task = parse_instruction(spec.instruction)
        views.append(lambda states: task_first(states, task))
    if spec.lidar:  # before egocentric: it reads table-frame positions (egocentric leaves the appended readings alone)
        views.append(with_keep_out_lidar)
    if spec.egocentric:
        views.append(egocentric)
    if not views:
        return None

    def view(states: np.ndarray) -> np.ndarray:
        for v in views:
            states = v(states)
        return states

    return view


def action_view(spec: RLSpec, space: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    """What the env, of action space ``space`` (a Box), receives of the run's policy's actions (N, A): the squashed
    action with ``squash``, else None."""
    if not spec.squash:
        return None
    low, high = space.low, space.high
    return lambda u: squashed(u, low, high)


def evaluate_rl(spec: RLSpec, policy: StatePolicy, reward_model: Any = None) -> dict[str, Any]:
    """True success of ``policy`` on the evaluation seeds (registered env, ending on success), with the reward model's view.

    ``eval.saturated_actions``: the fraction of the policy's action components saturated (:func:`saturated`) over the
    states its evaluation episodes acted in (ppo): a penalty cannot steer a policy through saturated components."""
    from embodied import specs
    from embodied.bench_reward import record_episode, reward_metrics, score_episodes, success_reward_level
    from embodied.envs import FixedTask, make
    from embodied.evaluate import summarize

    from embodied.envs import ScriptedExpert

    seeds = specs.eval_seeds(spec.episodes)
    env = FixedTask(make(spec.env_id, **spec.env_kwargs()), spec.instruction)
    try:
        eps = [{"env_id": spec.env_id, "instructions": "fixed", "noise": 0.0, "seed": s, **record_episode(env, policy, s)} for s in seeds]
        # the expert on the next seeds: how highly the model rates truly solved episodes of this task
        experts = [{"env_id": spec.env_id, "instructions": "fixed", "noise": 0.0, "seed": s, **record_episode(env, ScriptedExpert(env), s)}
                   for s in specs.eval_seeds(10, spec.episodes)] if reward_model is not None else []
    finally:
        env.close()
    runs = [{"success": e["success"] and not e["invalid"], "return": float(e["reward"].sum()), "cost": float(e["cost"].sum()),
             "length": len(e["action"]), "invalid": e["invalid"]} for e in eps]
    out: dict[str, Any] = {"eval": summarize(spec.env_id, env.unwrapped.family.name, "fixed", runs, None, seeds)}
    means = policy.mean_actions(np.concatenate([e["state"][:-1] for e in eps]))
    if means is not None:  # the states the evaluation episodes acted in
        space = env.action_space
        out["eval"]["saturated_actions"] = float(saturated(means, space.low, space.high, spec.squash).mean())
    if reward_model is not None:
        score_episodes(reward_model, eps + experts)
        believed = spec.success_threshold if spec.terminate_on_success else 0.5  # where the run's model calls a task solved
        out["reward_check"] = reward_metrics(eps, hack_threshold=believed, reward_level=success_reward_level(experts))
    return out


def format_result(r: dict[str, Any]) -> str:
    s, e = r["spec"], r["eval"]
    lo, hi = e["success_ci"]
    shaped = f" (dense part as a potential x {s['shaping']:g})" if s.get("shaping") else ""
    lines = [f"{s['algo']} on the {s['reward']} reward{shaped}, {s['steps']} steps ({r['train_seconds']:.0f} s, {r['env_steps_per_s']:.0f} steps/s on {r['device']}): "
             f"{s['env_id']} {s['instruction']!r}",
             f"  true success {e['success']:.2f} [{lo:.2f}, {hi:.2f}] over {e['episodes']} evaluation episodes, mean true return {e['mean_return']:.1f}, "
             f"mean episode cost {e['mean_cost']:.2f}"
             + ("" if e.get("saturated_actions") is None else f", saturated action components {e['saturated_actions']:.0%}")]
    if "lagrange" in r:
        g = r["lagrange"]
        start = "" if g.get("cost_limit_start") is None else f" (annealed from {g['cost_limit_start']:g} over the first {g['cost_limit_anneal']:.0%} of the steps)"
        lines.append(f"  Lagrangian: cost limit {g['cost_limit']:g}{start}, final multiplier {g['final_multiplier']:.3f} after {len(g['updates'])} updates")
    c = r.get("reward_check")
    if c:
        lines.append(f"  learned reward on these episodes: {c['hacking_episodes']} rated as solved (like the expert's) but not solved (reward hacking), "
                     f"step reward rho {c['reward_spearman_step'] if c['reward_spearman_step'] is None else round(c['reward_spearman_step'], 3)}")
    if "out" in r:
        lines.append(f"  wrote {r['out']}/rl.json")
    return "\n".join(lines)
