"""Any local Hugging Face text model works: the network's sizes are read from the store's features, not assumed to
be MiniLM's 384. The test builds a small BERT of another width (64) with MiniLM's tokenizer, embeds, trains,
serves and evaluates with it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from mmrec import EmbedConfig, ModelConfig, Recommender, Store, TrainConfig, embed_catalog, evaluate_store, train_store
from mmrec.encoders import TextEncoder, TextEncoderConfig
from mmrec.encoders.text import default_text_model_path

from .conftest import write_movielens_slice

WIDTH = 64


@pytest.fixture(scope="module")
def narrow_encoder(tmp_path_factory) -> TextEncoder:
    """A 2-layer BERT of width 64 (random weights, seeded) saved as a local model folder, MiniLM's tokenizer beside
    it; sentence-transformers mean-pools it."""
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("narrow-bert")
    minilm = default_text_model_path()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm / name, folder / name)
    vocab_size = json.loads((minilm / "config.json").read_text())["vocab_size"]
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=vocab_size, hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=128, max_position_embeddings=256)).save_pretrained(folder)
    encoder = TextEncoder(TextEncoderConfig(model_path=folder, device="cpu"))
    assert encoder.dim == WIDTH
    return encoder


def test_a_text_model_of_another_width_trains_serves_and_evaluates(tmp_path, narrow_encoder):
    data = write_movielens_slice(tmp_path, n_items=150, max_user=60)
    store_dir = tmp_path / "store"
    embed_catalog(data / "items.csv", store_dir, EmbedConfig(use_images=False, text_columns=["title", "genres"]),
                  text_encoder=narrow_encoder)
    _, text, present = Store(store_dir).feature_matrix("text")
    assert text.shape[1] == WIDTH and present.all()

    config = TrainConfig(epochs=1, show_progress=False, device="cpu", model=ModelConfig(use_image=False))
    summary = train_store(store_dir, data / "interactions.csv", data / "tags.csv", config, log=None,
                          text_encoder=narrow_encoder)
    assert summary["users"] > 0

    rec = Recommender.load(store_dir, device="cpu")
    # the network was sized from the store: item text and tag text are 64 wide, images keep their (unused) width
    assert rec.model.config.fusion.text_dim == WIDTH
    assert rec.model.config.interest.text_dim == WIDTH
    assert "tag" in rec.text_events
    top = rec.recommend("1", k=5)
    assert len(top) == 5 and all(0.0 <= p <= 1.0 for _, p in top)
    before = rec.score("1", [top[0][0]])
    rec.observe("1", top[0][0], timestamp=2_000_000_000)
    assert not np.array_equal(before, rec.score("1", [top[0][0]]))

    results = evaluate_store(store_dir, data / "interactions.csv", data / "tags.csv", text_encoder=narrow_encoder)
    for stage in ("valid", "test"):
        assert 0.0 <= results[stage]["ndcg@10"] <= 1.0 and results[stage]["n_users"] > 0
