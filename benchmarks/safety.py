"""Safety filters on the hazard environments: violations, interventions and success per shield (issue 7 targets).

    python benchmarks/safety.py --ckpt RUN [--episodes 20] [--policy expert --policy model] \
        [--shield none --shield learned --shield sim] [--env ID ...] [--out results.json]

For every env, policy (the scripted ``expert``, or the ``model`` of --ckpt acting
deterministically) and shield, it rolls out the fixed evaluation seeds and reports violations
per episode (indicator costs summed over each episode, a diverged one counts one; normal 95%
interval), which constraint they came from (per cost term), the fraction of episodes with a
violation and success (Wilson 95%), and interventions per episode. The learned shield
imagines with the model of --ckpt (or --shield-ckpt). Targets (issue 7): the learned shield cuts violations per episode by >= 95%
against none, with success at most 5 points lower; the sim shield is reported beside it.
Exit code 0 when every learned row meets both targets.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TRAIN_ENVS = ("embodied/PointReachHazard-v0", "embodied/PointPushZoneHazard-v0", "embodied/Arm2PushDirHazard-v0")
HELDOUT_ENVS = ("embodied/PointPushZoneHazardRows-v0", "embodied/Arm3ReachHazard-v0")


def measure(env_id: str, policy_name: str, shield: str, episodes: int, policy: Any, spec: Any, seed_offset: int = 0) -> dict[str, Any]:
    """One row: ``policy_name`` with ``shield`` on ``env_id`` over ``episodes`` evaluation seeds from ``seed_offset``."""
    from embodied import specs
    from embodied.envs import ScriptedExpert, make
    from embodied.evaluate import evaluate_policy_on, rollout, summarize
    from embodied.shielding import shield_factory

    make_shield = shield_factory(shield, spec) if shield != "none" else None
    t0 = time.perf_counter()
    if policy_name == "expert":
        seeds = specs.eval_seeds(episodes, seed_offset)
        env = make(env_id)
        try:
            runs = [rollout(env, ScriptedExpert(env), s, shield=(make_shield or shield_factory("none"))(env)) for s in seeds]
        finally:
            env.close()
        row = summarize(env_id, env.unwrapped.family.name, "seen", runs, None, seeds)
    else:
        (row,) = evaluate_policy_on([env_id], lambda: policy, episodes=episodes, expert=False, seed_offset=seed_offset,
                                    make_shield=make_shield or shield_factory("none"))
    row.update(policy=policy_name, shield=shield, seconds=time.perf_counter() - t0)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default=None, help="run folder of the model (policy and learned shield; not needed for expert with none/sim)")
    ap.add_argument("--shield-ckpt", default=None, help="model for the learned shield (default: --ckpt)")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--seed-offset", type=int, default=0,
                    help="start this many seeds into the evaluation seed list (e.g. to check settings chosen on the first seeds)")
    ap.add_argument("--env", action="append", default=None, help=f"env ids (default: {', '.join(TRAIN_ENVS + HELDOUT_ENVS)})")
    ap.add_argument("--policy", action="append", default=None, choices=("expert", "model"))
    ap.add_argument("--shield", action="append", default=None, choices=("none", "learned", "sim"))
    ap.add_argument("--horizon", type=int, default=3)
    ap.add_argument("--threshold", type=float, default=0.5, help="the learned shield's threshold (sim: 0.5, no violation)")
    ap.add_argument("--constraint-margin", type=float, default=None,
                    help="margin (m, m/s) of the learned shield's checks of the constraint specs on its imagined states (default: FilterConfig's)")
    ap.add_argument("--state-check", action="append", default=None,
                    help="constraint kinds the learned shield checks on its imagined states (default: FilterConfig's)")
    ap.add_argument("--cost-head-only", action="store_true", help="the learned shield reads its cost head alone (no check of the specs)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import torch

    from embodied.policies import FoundationPolicy
    from embodied.policies.safety import FilterConfig
    from embodied.shielding import ShieldSpec, load_shield_model

    torch.set_num_threads(1)
    if args.state_check is None:
        args.state_check = list(FilterConfig().state_checks)
    if args.constraint_margin is None:
        args.constraint_margin = FilterConfig().constraint_margin
    policies, shields = args.policy or ["expert", "model"], args.shield or ["none", "learned", "sim"]
    if not args.ckpt and ("model" in policies or "learned" in shields):
        ap.error("--ckpt is needed for --policy model and --shield learned")
    policy = FoundationPolicy.load(args.ckpt, device="cpu") if args.ckpt else None
    learned = (load_shield_model(args.shield_ckpt, "cpu") if args.shield_ckpt
               else ShieldSpec(model=policy.model, encode=policy.encode, device="cpu") if policy else ShieldSpec())
    specs_ = {"none": ShieldSpec(), "sim": ShieldSpec(config=FilterConfig(horizon=args.horizon)),
              "learned": ShieldSpec(model=learned.model, encode=learned.encode, device="cpu",
                                    config=FilterConfig(horizon=args.horizon, threshold=args.threshold, constraint_margin=args.constraint_margin,
                                                        state_checks=() if args.cost_head_only else tuple(args.state_check)))}
    rows = []
    for env_id in args.env or (TRAIN_ENVS + HELDOUT_ENVS):
        for pol in policies:
            base = None
            for shield in shields:
                r = measure(env_id, pol, shield, args.episodes, policy, specs_[shield], args.seed_offset)
                if shield == "none":
                    base = r
                if base is not None and shield != "none":
                    v0 = base["violations_per_episode"]
                    r["violation_reduction"] = 1 - r["violations_per_episode"] / v0 if v0 > 0 else None
                    r["success_drop_points"] = 100 * (base["success"] - r["success"])
                rows.append(r)
                lo, hi = r["violations_per_episode_ci"]
                red = r.get("violation_reduction")
                print(f"{env_id:<38} {pol:<6} {shield:<7} violations/ep {r['violations_per_episode']:6.2f} [{lo:.2f}, {hi:.2f}]  "
                      f"rate {r['violation_rate']:.2f}  interventions/ep {r.get('interventions_per_episode', 0):5.1f}  "
                      f"success {r['success']:.2f} [{r['success_ci'][0]:.2f}, {r['success_ci'][1]:.2f}]"
                      + (f"  reduction {100 * red:.1f}%" if red is not None else "")
                      + (f"  success {-r['success_drop_points']:+.0f} pts" if "success_drop_points" in r else "")
                      + "  by term " + " ".join(f"{t.removeprefix('cost_')} {v:.2f}" for t, v in r.get("violations_by_term", {}).items())
                      + f"  ({r['seconds']:.0f} s)", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"ckpt": args.ckpt, "episodes": args.episodes, "seed_offset": args.seed_offset, "horizon": args.horizon, "threshold": args.threshold,
                       "constraint_margin": args.constraint_margin,
                       "state_checks": [] if args.cost_head_only else args.state_check, "rows": rows}, f, indent=2)
    ok = all((r.get("violation_reduction") or 0) >= 0.95 and r.get("success_drop_points", 0) <= 5 for r in rows if r["shield"] == "learned")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
