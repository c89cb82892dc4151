"""The transformer: presets, the key/value cache against full forward passes, loss masks, decoding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from embodied.errors import ConfigError
from embodied.model import PRESETS, ModelConfig, TrajectoryModel, preset


def _batch(B: int, T: int, cfg: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b = {
        "state": torch.randn(B, T, cfg.state_dim, generator=g),
        "action": torch.rand(B, T, cfg.action_dim, generator=g) * 2 - 1,
        "reward": torch.randn(B, T, generator=g),
        "cost": (torch.rand(B, T, generator=g) > 0.8).float(),
        "success": torch.rand(B, T, generator=g) > 0.9,
        "timestep": torch.arange(T).repeat(B, 1) + 3,
        "mask": torch.ones(B, T, dtype=torch.bool),
    }
    for k in ("state", "action", "reward", "cost", "success"):
        b[f"{k}_mask"] = torch.ones(B, T, dtype=torch.bool)
    if cfg.pixels:
        b["pixels"] = torch.randint(0, 256, (B, T, cfg.pixels, cfg.pixels, 3), dtype=torch.uint8, generator=g)
        b["pixels_mask"] = torch.ones(B, T, dtype=torch.bool)
    return b


def test_presets_have_their_sizes():
    sizes = {n: TrajectoryModel(preset(n)).num_params() for n in PRESETS}
    assert sizes["tiny"] < 1e6 and TrajectoryModel(preset("tiny", pixels=64)).num_params() < 1e6
    assert sizes["tiny"] < sizes["small"] < sizes["base"] < sizes["large"]
    assert 20e6 < sizes["base"] < 30e6 and 90e6 < sizes["large"] < 110e6


def test_config_errors_are_clear():
    with pytest.raises(ConfigError, match="multiple of n_head"):
        ModelConfig(d_model=30, n_head=4)
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("huge")
    with pytest.raises(ConfigError, match="unknown model config"):
        ModelConfig.from_json({"d_model": 64, "wings": 2})
    assert ModelConfig.from_json(preset("small").to_json()) == preset("small")


@pytest.mark.parametrize("pixels,relations", [(0, False), (32, False), (0, True)])
def test_cache_matches_full_forward(pixels, relations):
    """Closed loop (one token at a time through the cache) equals the forward pass over the window."""
    torch.manual_seed(0)
    cfg = preset("tiny", pixels=pixels, context=16, relation_readout=relations)
    m = TrajectoryModel(cfg).eval()
    B, T = 3, 6
    b = _batch(B, T, cfg)
    goal = torch.randn(B, cfg.goal_dim)
    with torch.no_grad():
        full = m(b, goal)
        logits_full = m.action_logits(full["h_obs"])
        out_full = m.outcomes(full["h_act"])
        cache = m.start(goal)
        for t in range(T):
            logits, cache = m.observe(cache, b["state"][:, t], b["timestep"][:, t], b["pixels"][:, t] if pixels else None)
            torch.testing.assert_close(logits, logits_full[:, t], atol=1e-5, rtol=1e-4)
            pred, cache = m.act(cache, b["action"][:, t], b["timestep"][:, t])
            for k, v in pred.items():
                torch.testing.assert_close(v, out_full[k][:, t], atol=1e-5, rtol=1e-4)
        assert cache[0][0].shape[2] == cfg.n_goal_tokens + 2 * T


def test_cache_keeps_at_most_context_timesteps():
    cfg = preset("tiny", context=4)
    m = TrajectoryModel(cfg).eval()
    goal = torch.randn(1, cfg.goal_dim)
    with torch.no_grad():
        cache = m.start(goal)
        for t in range(10):
            _, cache = m.observe(cache, torch.randn(1, cfg.state_dim), torch.tensor([t]))
            _, cache = m.act(cache, torch.zeros(1, 2), torch.tensor([t]))
            assert cache[0][0].shape[2] <= cfg.n_goal_tokens + 2 * cfg.context
        # with the window full, the cache equals a fresh pass over the last `context` timesteps only
        states = [torch.randn(1, cfg.state_dim) for _ in range(cfg.context + 1)]
        cache = m.start(goal)
        for t, s in enumerate(states):
            logits, cache = m.observe(cache, s, torch.tensor([t]))
            if t < cfg.context:
                _, cache = m.act(cache, torch.zeros(1, 2), torch.tensor([t]))
        assert torch.isfinite(logits).all()


@pytest.mark.parametrize("pixels", [0, 32])
def test_losses_are_masked_per_modality(pixels):
    torch.manual_seed(0)
    cfg = preset("tiny", pixels=pixels)
    m = TrajectoryModel(cfg)
    b = _batch(4, 5, cfg)
    goal = torch.randn(4, cfg.goal_dim)
    total, terms = m.loss(b, goal)
    assert torch.isfinite(total) and all(v > 0 for v in terms.values())
    assert ("latent" in terms) == bool(pixels)
    # an actionless batch (imported video): no action, reward, cost or success terms, yet the state term trains
    for k in ("action", "reward", "cost", "success"):
        b[f"{k}_mask"] = torch.zeros_like(b[f"{k}_mask"])
    b["action"] = torch.full_like(b["action"], 0.0)
    m.zero_grad()
    total, terms = m.loss(b, goal)
    assert terms["action"] == 0 and terms["reward"] == 0 and terms["cost"] == 0 and terms["success"] == 0
    total.backward()
    assert m.action_head.weight.grad is None or m.action_head.weight.grad.abs().sum() == 0
    assert m.outcome_head.weight.grad is None or m.outcome_head.weight.grad.abs().sum() == 0
    assert m.state_head.weight.grad.abs().sum() > 0  # the observation objective still trains
    # padding frames (mask False) contribute nothing either
    b2 = _batch(2, 5, cfg, seed=1)
    goal2 = torch.randn(2, cfg.goal_dim)
    _, t_all = m.loss(b2, goal2)
    b2["mask"][:, 3:] = False
    b2["action"][:, 3:] = 123.0  # garbage where masked
    _, t_pad = m.loss(b2, goal2)
    assert torch.isfinite(t_pad["action"]) and t_pad["action"] != t_all["action"]


def test_action_bins_round_trip_and_sampling():
    cfg = preset("tiny")
    m = TrajectoryModel(cfg)
    a = torch.tensor([[-1.0, 1.0], [0.0, 0.5]])
    centers = m.bin_centers[m.action_bin(a)]
    assert (centers - a).abs().max() <= 1 / (cfg.action_bins - 1) + 1e-6
    logits = torch.full((2, 2, cfg.action_bins), -1e9)
    logits[..., 5] = 0.0
    assert torch.equal(m.decode_action(logits), m.bin_centers[5].expand(2, 2))
    assert torch.equal(m.decode_action(logits, sample=True), m.bin_centers[5].expand(2, 2))


def test_weight_decay_groups_cover_every_parameter_once():
    m = TrajectoryModel(preset("tiny", pixels=32))
    groups = m.optimizer_groups(0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(m.parameters()))
    decayed = {id(p) for p in groups[0]["params"]}
    assert id(m.action_head.weight) in decayed and id(m.action_head.bias) not in decayed
    assert id(m.timestep.weight) not in decayed and id(m.ln_f.weight) not in decayed


def test_bins_keep_multimodal_actions_apart():
    """Demonstrations that go left or right from the same state: the bins keep both modes; a mean would not."""
    torch.manual_seed(0)
    cfg = preset("tiny", action_bins=16)
    m = TrajectoryModel(cfg)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    B, T = 64, 2
    goal = torch.zeros(B, cfg.goal_dim)
    for _ in range(150):
        b = _batch(B, T, cfg)
        b["state"] = torch.zeros_like(b["state"])
        b["action"] = torch.where(torch.rand(B, T, 1) < 0.5, -0.8, 0.8).expand(B, T, 2).clone()
        loss, _ = m.loss(b, goal)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        probs = m.action_logits(m(b, goal)["h_obs"][:1, :1]).softmax(-1)[0, 0, 0]  # dimension 0
    left, right = probs[m.action_bin(torch.tensor(-0.8))], probs[m.action_bin(torch.tensor(0.8))]
    assert left > 0.3 and right > 0.3  # both modes, no mass in between
    assert probs[m.action_bin(torch.tensor(0.0))] < 0.05


def test_step_appends_action_and_observation_in_one_pass_like_act_then_observe():
    torch.manual_seed(0)
    cfg = preset("tiny", context=3)
    m = TrajectoryModel(cfg).eval()
    goal = torch.randn(2, cfg.goal_dim)
    states, actions = torch.randn(7, 2, cfg.state_dim), torch.rand(7, 2, 2) * 2 - 1
    with torch.no_grad():
        a_cache, b_cache = m.start(goal), m.start(goal)
        for t in range(7):
            ts = torch.full((2,), t)
            if t:
                _, a_cache = m.act(a_cache, actions[t - 1], ts - 1)
            la, a_cache = m.observe(a_cache, states[t], ts)
            lb, b_cache = m.step(b_cache, states[t], ts, prev_action=actions[t - 1] if t else None)
            if t < cfg.context:  # within the window the two are the same computation
                torch.testing.assert_close(la, lb, atol=1e-5, rtol=1e-4)
            # beyond it `step` drops the oldest timestep before the action token attends (it never sees
            # outside the window); the cache never grows past the window
            assert b_cache[0][0].shape[2] <= cfg.n_goal_tokens + 2 * cfg.context


def test_proprio_state_input_ignores_the_scene_features():
    """With state_input="proprio" the objects and zones reach the model only through the pixels."""
    from embodied import specs

    torch.manual_seed(0)
    model = TrajectoryModel(preset("tiny", state_input="proprio", obs_encoder="flat", pixels=16)).eval()
    full = TrajectoryModel(preset("tiny", obs_encoder="flat", pixels=16)).eval()
    full.load_state_dict(model.state_dict())
    batch, goal = _batch(2, 5, model.cfg), torch.randn(2, model.cfg.goal_dim)
    scene = batch["state"].clone()
    scene[..., specs.state_slices()["objects"]] += 5.0
    moved = {**batch, "state": scene}
    with torch.no_grad():
        assert torch.equal(model(batch, goal)["h_obs"], model(moved, goal)["h_obs"])
        assert not torch.allclose(full(batch, goal)["h_obs"], full(moved, goal)["h_obs"])
        proprio = batch["state"].clone()
        proprio[..., specs.state_slices()["ee_pos"]] += 1.0
        assert not torch.allclose(model(batch, goal)["h_obs"], model({**batch, "state": proprio}, goal)["h_obs"])
    with pytest.raises(ConfigError, match="state_input"):
        preset("tiny", state_input="objects")
    keep = specs.state_input_mask("no_velocity")
    sl = specs.state_slices()
    assert sum(keep) == specs.STATE_DIM - 2 - specs.MAX_JOINTS
    assert all(keep[i] == 0.0 for name in specs.VELOCITY_FEATURES for i in range(sl[name].start, sl[name].stop))


def test_imitate_masks_only_the_action_loss():
    """Windows the policy must not imitate (noisy recorders) still train the dynamics, reward, cost and success heads."""
    torch.manual_seed(0)
    model = TrajectoryModel(preset("tiny"))
    batch, goal = _batch(4, 6, model.cfg), torch.randn(4, model.cfg.goal_dim)
    _, all_terms = model.loss(batch, goal)
    _, some = model.loss({**batch, "imitate": torch.tensor([True, True, False, False])}, goal)
    _, none_ = model.loss({**batch, "imitate": torch.zeros(4, dtype=torch.bool)}, goal)
    assert float(none_["action"]) == 0.0 and float(some["action"]) != float(all_terms["action"])
    for k in ("state", "reward", "cost", "success"):
        assert torch.equal(all_terms[k], none_[k])


def test_configs_written_before_the_entity_encoder_load_as_they_were_trained():
    """A config.json without obs_encoder came from a flat model whose policy saw the whole context; one without
    lang_tokens from a model that read the pooled sentence embedding alone (goal_dim == lang_dim)."""
    old = {k: v for k, v in preset("tiny").to_json().items() if k not in ("obs_encoder", "n_entity_queries", "policy_history", "lang_tokens")}
    cfg = ModelConfig.from_json(old)
    assert cfg.obs_encoder == "flat" and cfg.policy_history and cfg.lang_tokens == 0 and cfg.goal_dim == cfg.lang_dim
    assert preset("tiny").obs_encoder == "entities" and not preset("tiny").policy_history
    assert preset("tiny").goal_dim == 17 * 384 and "word_mean" not in TrajectoryModel(cfg).state_dict()
    with pytest.raises(ConfigError, match="lang_tokens"):
        preset("tiny", lang_tokens=-1)
    with pytest.raises(ConfigError, match="hides"):
        preset("tiny", state_input="proprio")
    with pytest.raises(ConfigError, match="n_entity_queries"):
        preset("tiny", n_entity_queries=3)


def test_the_policy_sees_the_present_only():
    """policy_history=False: the action at t depends on the goal and the observation at t, not on the past, and
    not on the embodiment's velocities (they echo the previous action); the dynamics heads still see it all."""
    from embodied import specs

    torch.manual_seed(0)
    cfg = preset("tiny")
    m = TrajectoryModel(cfg).eval()
    b, goal = _batch(2, 5, cfg), torch.randn(2, cfg.goal_dim)
    past = {**b, "state": b["state"].clone(), "action": b["action"].clone()}
    past["state"][:, :-1] += 1.0
    past["action"][:, :-1] *= -1
    vel = {**b, "state": b["state"].clone()}
    vel["state"][..., specs.state_slices()["ee_vel"]] += 2.0
    obj = {**b, "state": b["state"].clone()}
    obj["state"][:, -1, specs.state_slices()["objects"]] += 1.0
    with torch.no_grad():
        base, moved, fast, scene = m(b, goal), m(past, goal), m(vel, goal), m(obj, goal)
        other = m(b, torch.randn(2, cfg.goal_dim))
    torch.testing.assert_close(moved["h_pol"][:, -1], base["h_pol"][:, -1])
    torch.testing.assert_close(fast["h_pol"], base["h_pol"])
    assert not torch.allclose(moved["h_obs"][:, -1], base["h_obs"][:, -1])  # the trajectory view remembers
    assert not torch.allclose(fast["h_obs"], base["h_obs"])
    assert not torch.allclose(scene["h_pol"][:, -1], base["h_pol"][:, -1])  # the scene reaches the policy
    assert not torch.allclose(other["h_pol"], base["h_pol"])  # and so does the instruction
    # closed loop: the policy's logits from the goal cache, one frame at a time, equal the forward pass's at every frame
    with torch.no_grad():
        for t in range(b["state"].shape[1]):
            logits = m.policy_logits(m.start(goal), b["state"][:, t], b["timestep"][:, t])
            torch.testing.assert_close(logits, m.action_logits(base["h_pol"][:, t]), atol=1e-5, rtol=1e-4)


def _named_object_scenes(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scenes of three objects in three distinct colours, an instruction naming one colour (a one-hot "embedding"),
    and the action of an expert that moves the end effector toward the named object: (state, goal, action)."""
    from embodied import specs

    sl, F = specs.state_slices(), specs.OBJECT_FEATURES
    palette = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    state = torch.zeros(n, specs.STATE_DIM)
    ee = torch.rand(n, 2, generator=g) * 0.6 - 0.3
    state[:, sl["ee_pos"]] = ee
    objs = state[:, sl["objects"]].view(n, specs.N_OBJECTS, F)
    objs[..., :2] = torch.rand(n, specs.N_OBJECTS, 2, generator=g) * 0.6 - 0.3
    colours = torch.stack([torch.randperm(3, generator=g) for _ in range(n)])  # (n, 3): each slot's colour
    objs[..., 6:9] = palette[colours]
    state[:, sl["objects"]] = objs.reshape(n, -1)
    named = torch.randint(0, 3, (n,), generator=g)  # the colour the instruction names
    slot = (colours == named[:, None]).float().argmax(1)
    goal = torch.zeros(n, 16)
    goal[torch.arange(n), named] = 1.0
    v = (objs[torch.arange(n), slot, :2] - ee) * 8
    action = v * (0.9 / v.norm(dim=-1, keepdim=True).clamp(min=0.9))
    return state, goal + 0.01 * torch.randn(n, 16, generator=g), action


def test_the_policy_learns_to_find_the_named_object():
    """Trained briefly on scenes of three coloured objects, the policy moves toward the one its instruction names in
    scenes it never saw (an MLP over the whole state only memorises them): held-out action MSE under 0.1 of the
    actions' variance."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    cfg = preset("tiny", lang_dim=16, lang_tokens=0, context=1)  # a one-hot "sentence embedding" names the colour
    m = TrajectoryModel(cfg)
    state, goal, action = _named_object_scenes(4096, g)
    m.set_normalizer(state.mean(0), state.std(0), goals=torch.eye(3, 16))
    opt = torch.optim.AdamW(m.optimizer_groups(0.0), lr=3e-3)

    def batch(s: torch.Tensor, a: torch.Tensor) -> dict[str, torch.Tensor]:
        n = len(s)
        ones = torch.ones(n, 1, dtype=torch.bool)
        return {"state": s[:, None], "action": a[:, None], "reward": torch.zeros(n, 1), "cost": torch.zeros(n, 1),
                "success": torch.zeros(n, 1), "timestep": torch.zeros(n, 1, dtype=torch.long), "mask": ones, "action_mask": ones}

    for step in range(400):
        i = torch.randint(0, len(state), (128,), generator=g)
        loss, _ = m.loss(batch(state[i], action[i]), goal[i], weights={"state": 0.0, "reward": 0.0, "cost": 0.0, "success": 0.0})
        opt.zero_grad()
        loss.backward()
        opt.step()
    s, gl, a = _named_object_scenes(512, torch.Generator().manual_seed(1))
    m.eval()
    with torch.no_grad():
        pred = m.decode_action(m.action_logits(m(batch(s, a), gl)["h_pol"][:, 0]))
    assert (pred - a).pow(2).mean() < 0.1 * a.var(0).mean()


def _object_to_zone_scenes(n: int, g: torch.Generator, tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scenes of three objects and three zones, each in three colours, an instruction "push the <c1> cube into the
    <c2> zone" and the direction from the named object to the named zone as the action: (state, goal, action).

    The fake encoder gives each word a vector (a colour word's carries its role, as a contextual encoder's output
    does) and the sentence their mean, which is the same for "red cube ... green zone" and "green cube ... red zone".
    With ``tokens`` the goal is laid out as ``lang_tokens=tokens`` models read it; with 0 it is the sentence alone."""
    from embodied import specs

    sl, F = specs.state_slices(), specs.OBJECT_FEATURES
    palette = torch.eye(3)
    state = torch.zeros(n, specs.STATE_DIM)
    ee = torch.rand(n, 2, generator=g) * 0.6 - 0.3
    state[:, sl["ee_pos"]] = ee
    objs = state[:, sl["objects"]].view(n, specs.N_OBJECTS, F)
    objs[..., :2] = torch.rand(n, specs.N_OBJECTS, 2, generator=g) * 0.6 - 0.3
    zones = state[:, sl["zones"]].view(n, specs.N_ZONES, specs.ZONE_FEATURES)
    zones[..., :2] = torch.rand(n, specs.N_ZONES, 2, generator=g) * 0.6 - 0.3
    zones[..., 2] = 0.05
    oc, zc = (torch.stack([torch.randperm(3, generator=g) for _ in range(n)]) for _ in range(2))
    objs[..., 6:9], zones[..., 3:6] = palette[oc], palette[zc]
    state[:, sl["objects"]], state[:, sl["zones"]] = objs.reshape(n, -1), zones.reshape(n, -1)
    c1, c2 = torch.randint(0, 3, (n,), generator=g), torch.randint(0, 3, (n,), generator=g)
    vocab = torch.randn(8, 16, generator=torch.Generator().manual_seed(123))  # push, the, cube, into, zone, object role, zone role
    colour = torch.zeros(3, 16)
    colour[:, 8:11] = torch.eye(3) * 2
    words = torch.stack([vocab[0].expand(n, 16), vocab[1].expand(n, 16), colour[c1] + vocab[5], vocab[2].expand(n, 16),
                         vocab[3].expand(n, 16), vocab[1].expand(n, 16), colour[c2] + vocab[6], vocab[4].expand(n, 16)], 1)
    sentence = words.mean(1)
    goal = sentence
    if tokens:
        padded = torch.zeros(n, tokens, 16)
        padded[:, : words.shape[1]] = words
        goal = torch.cat([sentence, padded.flatten(1)], 1)
    ar = torch.arange(n)
    obj = objs[ar, (oc == c1[:, None]).float().argmax(1), :2]
    zone = zones[ar, (zc == c2[:, None]).float().argmax(1), :2]
    v = zone - obj
    return state, goal, 0.9 * v / v.norm(dim=-1, keepdim=True).clamp(min=1e-3)


def _train_present_policy(m: TrajectoryModel, state: torch.Tensor, goal: torch.Tensor, action: torch.Tensor, steps: int,
                          g: torch.Generator) -> None:
    """Fit only the action head's loss on single-frame windows (the present-only policy view)."""
    opt = torch.optim.AdamW(m.optimizer_groups(0.0), lr=3e-3)
    for _ in range(steps):
        i = torch.randint(0, len(state), (128,), generator=g)
        loss, _ = m.loss(_frames(state[i], action[i]), goal[i], weights={"state": 0.0, "reward": 0.0, "cost": 0.0, "success": 0.0})
        opt.zero_grad()
        loss.backward()
        opt.step()


def _frames(s: torch.Tensor, a: torch.Tensor) -> dict[str, torch.Tensor]:
    """One-timestep windows of states ``s`` (N, S) and actions ``a`` (N, A)."""
    n = len(s)
    ones = torch.ones(n, 1, dtype=torch.bool)
    return {"state": s[:, None], "action": a[:, None], "reward": torch.zeros(n, 1), "cost": torch.zeros(n, 1),
            "success": torch.zeros(n, 1), "timestep": torch.zeros(n, 1, dtype=torch.long), "mask": ones, "action_mask": ones}


def test_the_policy_reads_which_colour_is_the_objects_and_which_the_zones():
    """The instruction's token outputs carry what its pooled embedding loses: which named colour is the object's and
    which the zone's. Trained briefly, the policy pushes from the named object toward the named zone in unseen
    scenes (held-out action MSE under 0.15 of the actions' variance); from the pooled sentence alone it cannot,
    since "red cube ... green zone" and "green cube ... red zone" pool to the same vector."""
    results = {}
    for tokens in (16, 0):
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        m = TrajectoryModel(preset("tiny", lang_dim=16, lang_tokens=tokens, context=1))
        state, goal, action = _object_to_zone_scenes(4096, g, tokens)
        m.set_normalizer(state.mean(0), state.std(0), goals=goal[:64])
        _train_present_policy(m, state, goal, action, 600, g)
        s, gl, a = _object_to_zone_scenes(512, torch.Generator().manual_seed(1), tokens)
        m.eval()
        with torch.no_grad():
            pred = m.decode_action(m.action_logits(m(_frames(s, a), gl)["h_pol"][:, 0]))
        results[tokens] = float((pred - a).pow(2).mean() / a.var(0).mean())
    assert results[16] < 0.15 and results[0] > 2 * results[16], results


def test_the_policy_is_the_same_anywhere_on_the_table():
    """Shifting the end effector and every object (and its start), zone and hazard by one offset leaves the policy's
    view unchanged: entities enter relative to the end effector."""
    from embodied import specs

    torch.manual_seed(0)
    cfg = preset("tiny")
    m = TrajectoryModel(cfg).eval()
    b, goal = _batch(2, 4, cfg), torch.randn(2, cfg.goal_dim)
    shifted = b["state"].clone()
    sl, off = specs.state_slices(), torch.tensor([0.07, -0.05])
    shifted[..., sl["ee_pos"]] += off
    for name, n, f, cols in (("objects", specs.N_OBJECTS, specs.OBJECT_FEATURES, (0, 12)), ("zones", specs.N_ZONES, specs.ZONE_FEATURES, (0,)),
                             ("hazards", specs.N_HAZARDS, specs.HAZARD_FEATURES, (0,))):
        block = shifted[..., sl[name]].unflatten(-1, (n, f))
        for c in cols:
            block[..., c : c + 2] += off
        shifted[..., sl[name]] = block.flatten(-2)
    moved = {**b, "state": shifted}
    with torch.no_grad():
        base, other = m(b, goal), m(moved, goal)
    torch.testing.assert_close(other["h_pol"], base["h_pol"], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(other["h_obs"], base["h_obs"])  # the dynamics view knows where things are
    started = b["state"].clone()  # nor where an object started (its progress echoes the pushes so far)
    started[..., sl["objects"]] = started[..., sl["objects"]].unflatten(-1, (specs.N_OBJECTS, specs.OBJECT_FEATURES)).index_add(
        -1, torch.tensor([12]), torch.full((2, 4, specs.N_OBJECTS, 1), 0.1)).flatten(-2)
    with torch.no_grad():
        torch.testing.assert_close(m({**b, "state": started}, goal)["h_pol"], base["h_pol"], atol=1e-5, rtol=1e-4)


def test_the_pixel_stem_as_a_matmul_is_the_convolution():
    """The CNN's 4x4 stride-4 stem runs as one matmul over patches; it equals the convolution it replaces."""
    from embodied.model import PixelEncoder

    torch.manual_seed(0)
    enc = PixelEncoder(32).eval()
    for size in (64, 84):
        px = torch.randint(0, 256, (3, size, size, 3), dtype=torch.uint8)
        conv = enc.net(px.permute(0, 3, 1, 2).float() / 255.0 - 0.5)
        torch.testing.assert_close(enc(px), conv, atol=1e-5, rtol=1e-4)


def test_the_experts_labels_are_the_policys_targets_wherever_a_store_has_them():
    """With ``expert_action`` in the batch, the action loss learns the labels (also in windows not to be imitated);
    labels equal to the actions leave the loss as it was."""
    from embodied import specs

    torch.manual_seed(0)
    cfg = preset("tiny")
    m = TrajectoryModel(cfg)
    b, goal = _batch(2, 5, cfg), torch.randn(2, cfg.goal_dim)
    b["imitate"] = torch.tensor([True, False])
    w = {"state": 0.0, "reward": 0.0, "cost": 0.0, "success": 0.0}
    plain = float(m.loss(b, goal, weights=w)[1]["action"])
    same = {**b, specs.EXPERT_ACTION: b[specs.ACTION].clone(), f"{specs.EXPERT_ACTION}_mask": torch.zeros(2, 5, dtype=torch.bool)}
    same[f"{specs.EXPERT_ACTION}_mask"][0] = True  # labels only where the window is imitated anyway
    assert abs(float(m.loss(same, goal, weights=w)[1]["action"]) - plain) < 1e-6
    other = {**same, specs.EXPERT_ACTION: -b[specs.ACTION]}
    assert abs(float(m.loss(other, goal, weights=w)[1]["action"]) - plain) > 1e-3  # the labels are the targets
    labelled = {**same, f"{specs.EXPERT_ACTION}_mask": torch.ones(2, 5, dtype=torch.bool)}
    labelled["mask"] = b["mask"]
    no_imitate = {**labelled, "imitate": torch.tensor([False, False])}
    assert float(m.loss(no_imitate, goal, weights=w)[1]["action"]) > 0  # labelled steps train even where actions would not


def test_entity_queries_are_computed_once_per_goal_in_closed_loop_and_forgotten_on_new_weights():
    torch.manual_seed(0)
    m = TrajectoryModel(preset("tiny")).eval()
    goal = torch.randn(1, m.cfg.goal_dim)
    with torch.inference_mode():
        q = m.entity_queries(goal)
        assert m.entity_queries(goal) is q  # the same goal tensor: remembered
        assert m.entity_queries(goal.clone()) is not q  # another tensor: computed again
    other = TrajectoryModel(preset("tiny"))
    m.load_state_dict(other.state_dict())
    with torch.inference_mode():
        fresh = m.entity_queries(goal)
    torch.testing.assert_close(fresh, other.eval().entity_queries(goal.clone()).detach())
    with torch.enable_grad():
        assert m.entity_queries(goal) is not m.entity_queries(goal)  # with gradients: never remembered


def test_each_cost_term_is_learned_and_imagined():
    """Where the store has per-term costs, the term head learns them (a term the total rarely shows included), and
    imagination returns each term's probability beside the total's; without them, or in a config from before, the
    total alone."""
    from embodied import specs

    torch.manual_seed(0)
    cfg = preset("tiny")
    m = TrajectoryModel(cfg)
    b, goal = _batch(4, 6, cfg), torch.randn(4, cfg.goal_dim)
    g = torch.Generator().manual_seed(1)
    b[specs.COST_BY_TERM] = (torch.rand(4, 6, len(specs.COST_TERMS), generator=g) > 0.7).float()
    b[f"{specs.COST_BY_TERM}_mask"] = torch.ones(4, 6, dtype=torch.bool)
    _, terms = m.loss(b, goal)
    assert "cost_terms" in terms
    first = terms["cost_terms"].item()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(60):
        opt.zero_grad()
        m.loss(b, goal)[1]["cost_terms"].backward()
        opt.step()
    assert m.loss(b, goal)[1]["cost_terms"].item() < 0.5 * first  # it fits the labels it is given
    b[f"{specs.COST_BY_TERM}_mask"][:] = False  # a store without them: masked, no signal
    assert m.loss(b, goal)[1]["cost_terms"].item() == 0.0
    assert "cost_terms" not in m.loss({k: v for k, v in b.items() if not k.startswith(specs.COST_BY_TERM)}, goal)[1]
    m.eval()
    with torch.no_grad():
        cache = m.step(m.start(goal[:1]), b["state"][:1, 0], b["timestep"][:1, 0])[1]
        out = m.imagine(cache, b["state"][:1, 0], b["timestep"][:1, 0], torch.rand(5, 3, cfg.action_dim) * 2 - 1, observed=True)
        o = m.act(cache, torch.zeros(1, cfg.action_dim), b["timestep"][:1, 0])[0]
        first_step = m.imagine(cache, b["state"][:1, 0], b["timestep"][:1, 0], torch.zeros(1, 1, cfg.action_dim), observed=True)
    assert out["cost_terms"].shape == (5, 3, len(specs.COST_TERMS)) and out["cost"].shape == (5, 3)
    assert torch.allclose(first_step["cost_terms"][0, 0], torch.sigmoid(o["term_logits"][0]), atol=1e-5)
    assert torch.allclose(first_step["cost"][0, 0], torch.sigmoid(o["cost_logit"][0]), atol=1e-5)  # the total's own head
    old = ModelConfig.from_json({k: v for k, v in cfg.to_json().items() if k != "cost_terms"})
    assert old.cost_terms == 0 and TrajectoryModel(old).term_head is None
    with pytest.raises(ConfigError, match="cost_terms"):
        preset("tiny", cost_terms=3)


def test_the_trajectory_token_reads_how_far_the_objects_moved_and_the_policy_does_not():
    """moved_readout: the success, reward and dynamics heads read the attended objects' displacement from their
    starts (without it, a fingertip resting against an unmoved cube looked like a finished push); the present-only
    policy never sees the start positions (its shortcut). Configs written before the readout load without it."""
    from embodied import specs

    torch.manual_seed(0)
    cfg = preset("tiny")
    m = TrajectoryModel(cfg).eval()
    b, goal = _batch(2, 5, cfg), torch.randn(2, cfg.goal_dim)
    start = {**b, "state": b["state"].clone()}
    objs = start["state"][..., specs.state_slices()["objects"]].unflatten(-1, (specs.N_OBJECTS, specs.OBJECT_FEATURES))
    objs[..., 12:14] += 0.2  # every object started 0.2 m elsewhere: the same scene now, another displacement
    start["state"][..., specs.state_slices()["objects"]] = objs.flatten(-2)
    with torch.no_grad():
        here, there = m(b, goal), m(start, goal)
        def readout(state: torch.Tensor) -> torch.Tensor:
            s = (state - m.state_mean) / m.state_std * m.state_input_mask
            return m.entity_enc(s, state, m.entity_queries(goal), m.state_std[m.entity_enc.ee].mean())[1]

        moved, still = readout(start["state"]), readout(b["state"])
    torch.testing.assert_close(there["h_pol"], here["h_pol"])
    assert not torch.allclose(there["h_obs"], here["h_obs"]) and not torch.allclose(there["h_act"], here["h_act"])
    assert not torch.allclose(moved, still)  # the readout itself changed, not only the flat state encoder's input
    old = {k: v for k, v in preset("tiny").to_json().items() if k != "moved_readout"}
    assert cfg.moved_readout and not ModelConfig.from_json(old).moved_readout
    assert "entity_enc.moved.weight" in m.state_dict()
    assert "entity_enc.moved.weight" not in TrajectoryModel(ModelConfig.from_json(old)).state_dict()


def test_relation_features_are_displacement_along_the_asked_direction_and_distances():
    from embodied.model import relation_features

    moved = torch.tensor([[0.3, 0.0], [0.0, 0.0], [0.0, -0.2]]).view(1, 1, 3, 2)
    where = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]]).view(1, 1, 3, 2)
    right = torch.tensor([1.0, 0.0]).expand(1, 1, 3, 2)
    f = relation_features(moved, where, right)[0, 0]
    assert f.shape == (3 * 3 + 3,)
    torch.testing.assert_close(f[:3], torch.tensor([0.3, 0.0, 0.0]))  # along "right": only the first moved that way
    torch.testing.assert_close(f[3:6], torch.tensor([0.0, 0.0, 0.2]))  # across it: the third moved down, sideways to right
    torch.testing.assert_close(f[6:9], torch.tensor([5.0, 1.0, 18.0 ** 0.5]))  # pairs (0,1) (0,2) (1,2)
    torch.testing.assert_close(f[9:], torch.tensor([0.0, 5.0, 1.0]))
    left = relation_features(moved, where, -right)[0, 0]
    torch.testing.assert_close(left[:3], -f[:3])  # the same push, asked the other way, reads the other sign


def test_the_relation_readout_is_opt_in_and_old_configs_load_without_it():
    torch.manual_seed(0)
    cfg = preset("tiny", relation_readout=True)
    m = TrajectoryModel(cfg)
    assert "entity_enc.relations.weight" in m.state_dict() and "entity_enc.direction.weight" in m.state_dict()
    assert "entity_enc.relations.weight" not in TrajectoryModel(preset("tiny")).state_dict()
    assert not ModelConfig.from_json({k: v for k, v in cfg.to_json().items() if k != "relation_readout"}).relation_readout
    with pytest.raises(ConfigError, match="moved_readout"):
        preset("tiny", relation_readout=True, moved_readout=False)
    b, goal = _batch(2, 5, cfg), torch.randn(2, cfg.goal_dim)
    loss, _ = m.loss(b, goal)
    loss.backward()
    assert m.entity_enc.direction.weight.grad is not None and m.entity_enc.direction.weight.grad.abs().sum() > 0


def test_success_bonus_is_left_to_the_success_head_and_added_back_to_the_reward():
    torch.manual_seed(0)
    plain = TrajectoryModel(preset("tiny"))
    split = TrajectoryModel(preset("tiny", success_bonus=10.0))
    split.load_state_dict(plain.state_dict())
    b = _batch(3, 6, plain.cfg)
    goal = torch.randn(3, plain.cfg.goal_dim)
    # the head learns the reward less the bonus on solved steps: the plain model's term on that target
    dense = dict(b, reward=b["reward"] + 10.0 * b["success"].float())
    assert split.loss(dense, goal)[1]["reward"].item() == pytest.approx(plain.loss(b, goal)[1]["reward"].item(), rel=1e-5)
    assert split.loss(b, goal)[1]["reward"].item() != pytest.approx(plain.loss(b, goal)[1]["reward"].item(), rel=1e-3)
    # and every reader of the reward gets the head's plus the bonus times the success probability
    plain.eval()
    split.eval()
    with torch.no_grad():
        o = plain.outcomes(torch.randn(3, 6, plain.cfg.d_model))
        torch.testing.assert_close(split.expected_reward(o), plain.expected_reward(o) + 10.0 * torch.sigmoid(o["success_logit"]))
        acts = torch.rand(5, 3, plain.cfg.action_dim) * 2 - 1
        im = [m.imagine(m.step(m.start(goal[:1]), b["state"][:1, 0], b["timestep"][:1, 0])[1], b["state"][:1, 0], b["timestep"][:1, 0],
                        acts, observed=True) for m in (plain, split)]
    torch.testing.assert_close(im[1]["reward"], im[0]["reward"] + 10.0 * im[0]["success"])
    assert ModelConfig.from_json({k: v for k, v in preset("tiny").to_json().items() if k != "success_bonus"}).success_bonus == 0.0
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="success_bonus"):
            preset("tiny", success_bonus=bad)


def test_reward_change_head_learns_the_dense_change_and_fuses_it_onto_the_last_step():
    """``ModelConfig.reward_change`` = w: a head at the action token learns r_t - r_{t-1} of the dense reward (the success
    bonus left out) in units of ``change_scale``, and ``dense_reward`` gives w (prev + change) + (1 - w) level."""
    torch.manual_seed(0)
    m = TrajectoryModel(preset("tiny", reward_change=0.8, success_bonus=10.0))
    m.set_normalizer(torch.zeros(m.cfg.state_dim), torch.ones(m.cfg.state_dim), reward_mean=0.5, reward_std=2.0, change_std=0.25)
    assert m.change_scale.item() == 0.25
    b = _batch(3, 6, m.cfg)
    b["reward_mask"] = torch.ones(3, 6, dtype=torch.bool)
    b["reward_mask"][1, 2] = False  # a step without a reward: neither change it is part of is learned
    goal = torch.randn(3, m.cfg.goal_dim)
    out = m(b, goal)
    _, terms = m.loss(b, goal, out=out)
    pred = m.outcomes(out["h_act"])["reward_change"][:, 1:]
    dense = b["reward"] - 10.0 * b["success"].float()
    want = (dense[:, 1:] - dense[:, :-1]) / 0.25
    keep = b["reward_mask"][:, 1:] & b["reward_mask"][:, :-1]
    assert int(keep.sum()) == 3 * 5 - 2
    assert terms["reward_change"].item() == pytest.approx(((pred - want).pow(2)[keep]).mean().item(), rel=1e-5)
    terms["reward_change"].backward()
    assert m.change_head.weight.grad.abs().sum() > 0 and m.outcome_head.weight.grad is None  # its own head, through the trunk
    # the fusion: the level where there is no previous step (NaN), else the running sum pulled towards the level
    with torch.no_grad():
        o = m.outcomes(torch.randn(4, m.cfg.d_model))
        level = o["reward"] * 2.0 + 0.5
        prev = torch.tensor([float("nan"), 0.0, -1.0, 3.0])
        fused = m.dense_reward(o, prev)
        torch.testing.assert_close(m.dense_reward(o), level)
        torch.testing.assert_close(fused[0], level[0])
        torch.testing.assert_close(fused[1:], 0.8 * (prev[1:] + 0.25 * o["reward_change"][1:]) + 0.2 * level[1:])
        torch.testing.assert_close(m.expected_reward(o, prev), fused + 10.0 * torch.sigmoid(o["success_logit"]))
    # a model without it has no head, no term and no buffer: its checkpoints are what they were
    plain = TrajectoryModel(preset("tiny"))
    assert plain.change_head is None and "change_scale" not in plain.state_dict()
    assert "reward_change" not in plain.loss(b, goal)[1] and "reward_change" not in plain.outcomes(torch.randn(2, plain.cfg.d_model))
    assert ModelConfig.from_json({k: v for k, v in preset("tiny").to_json().items() if k != "reward_change"}).reward_change == 0.0
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ConfigError, match="reward_change"):
            preset("tiny", reward_change=bad)


def test_a_hindsight_model_learns_each_actions_outcome_at_the_observation_it_led_to():
    """``ModelConfig.reward_hindsight``: reward, cost and success of action t are learned at observation t + 1's token,
    for actions whose next observation is in the window; the dynamics head stays at the action token."""
    torch.manual_seed(0)
    m = TrajectoryModel(preset("tiny", reward_hindsight=True))
    m.set_normalizer(torch.zeros(m.cfg.state_dim), torch.ones(m.cfg.state_dim), reward_mean=0.5, reward_std=2.0)
    b = _batch(3, 6, m.cfg)
    b["state_mask"][1, 4] = False  # observation 4 of window 1 is missing: action 3 there has no reading
    goal = torch.randn(3, m.cfg.goal_dim)
    out = m(b, goal)
    _, terms = m.loss(b, goal, out=out)
    pred = m.outcomes(out["h_obs"][:, 1:])
    keep = torch.ones(3, 5, dtype=torch.bool)
    keep[1, 3] = False
    want = ((pred["reward"] - (b["reward"][:, :-1] - 0.5) / 2.0).pow(2)[keep]).mean()
    assert terms["reward"].item() == pytest.approx(want.item(), rel=1e-5)
    bce = F.binary_cross_entropy_with_logits(pred["success_logit"], b["success"][:, :-1].float(), reduction="none")
    assert terms["success"].item() == pytest.approx(bce[keep].mean().item(), rel=1e-5)
    # the window's last action and the unread one train nothing here; a foresight model learns both
    fore = TrajectoryModel(preset("tiny"))
    fore.load_state_dict(m.state_dict())
    changed = {**b, "reward": b["reward"].clone()}
    changed["reward"][:, -1] += 100.0
    changed["reward"][1, 3] += 100.0
    assert m.loss(changed, goal)[1]["reward"].item() == pytest.approx(terms["reward"].item(), rel=1e-6)
    assert fore.loss(changed, goal)[1]["reward"].item() > fore.loss(b, goal)[1]["reward"].item() + 100
    # the dynamics term is the foresight model's (same weights, same head, same token)
    assert terms["state"].item() == pytest.approx(fore.loss(b, goal)[1]["state"].item(), rel=1e-6)
    assert ModelConfig.from_json({k: v for k, v in preset("tiny").to_json().items() if k != "reward_hindsight"}).reward_hindsight is False
