import pandas as pd
import pytest
import torch

from mmrec.io.catalog import compose_text
from mmrec.fusion import FusionConfig, ItemFusion, ModalityAttention

from ..conftest import ASSETS

# Bundled MovieLens items with posters in ../shared, including near-duplicates that content alone must tell apart:
# Toy Story 1 & 2, Star Wars IV-VI, The Lord of the Rings I-III.
REAL_ITEMS = [1, 3114, 260, 1196, 1210, 4993, 5952, 7153, 356, 318, 296, 593, 2571, 480, 589, 858]


@pytest.fixture(scope="module")
def real_items(posters, text_encoder, image_encoder):
    """Real features of ``REAL_ITEMS``: title + genres through the text encoder ``(N, 384)``, posters through the
    image encoder ``(N, 1280)``."""
    items = pd.read_csv(ASSETS / "items.csv", dtype=str, keep_default_na=False).set_index("item_id")
    texts = [compose_text({"title": items.at[str(i), "title"], "genres": items.at[str(i), "genres"]})
             for i in REAL_ITEMS]
    result = image_encoder.encode_paths([posters / items.at[str(i), "image_path"] for i in REAL_ITEMS])
    assert result.ok.all(), result.errors
    return torch.from_numpy(text_encoder.encode(texts)), torch.from_numpy(result.features)


@pytest.fixture(autouse=True)
def _single_thread():
    """The fusion layer's small matmuls gain nothing from threads; on a busy 2-core machine contended threads made
    each step ~10x slower. (The module-scoped encoder fixtures are set up before this, with all threads.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fusion():
    torch.manual_seed(0)
    return ItemFusion(FusionConfig(n_items=6)).eval()


def _inputs(n=6):
    return torch.randn(n, 384), torch.rand(n, 1280)


def test_attention_covers_only_present_modalities_of_real_items(fusion, real_items):
    text, image = real_items[0][:6], real_items[1][:6]
    present = torch.tensor([[1, 1], [1, 0], [0, 1], [1, 1], [1, 0], [0, 1]], dtype=torch.bool)
    known = torch.zeros(6, dtype=torch.bool)
    captured = []
    hook = fusion.attention.register_forward_hook(lambda module, args, output: captured.append(output[1]))
    try:
        out = fusion(text, image, present, torch.arange(6), known)
    finally:
        hook.remove()
    assert out.shape == (6, 128) and torch.isfinite(out).all()
    weights = captured[0]  # (N, tokens [text, image, ID], heads)
    heads = fusion.attention.heads
    assert torch.equal(weights[:, :2] > 0, present.unsqueeze(-1).expand(-1, -1, heads))
    assert (weights[:, 2] == 0).all()  # unknown items: no ID token
    torch.testing.assert_close(weights.sum(1), torch.ones(6, heads))
    # Another item's real poster (text) in a missing slot changes nothing; in a present slot it changes the vector.
    for slot, swapped in ((1, fusion(text, image.roll(1, 0), present, torch.arange(6), known)),
                          (0, fusion(text.roll(1, 0), image, present, torch.arange(6), known))):
        has = present[:, slot]
        torch.testing.assert_close(swapped[~has], out[~has])
        assert ((swapped - out).abs().amax(1)[has] > 1e-3).all()


def test_text_and_image_share_one_tower(fusion):
    text, image = _inputs(2)
    with torch.no_grad():
        # Move the shared tower away from its initial weights, so a copy of it made at construction differs.
        for parameter in fusion.tower.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
        t, i = fusion.modality_vectors(text, image)
        assert t.shape == i.shape == (2, 128)
        torch.testing.assert_close(t, fusion.tower(fusion.text_adapter(text)))
        torch.testing.assert_close(i, fusion.tower(fusion.image_adapter(image)))
        # The fused vectors of a text-only and of an image-only item both depend on that one tower.
        present = torch.tensor([[True, False], [False, True]])
        before = fusion(text, image, present)
        fusion.tower.net[-1].weight.mul_(-1.0)
        after = fusion(text, image, present)
    assert ((after - before).abs().amax(1) > 1e-3).all()
    assert sum(1 for m in fusion.modules() if m.__class__.__name__ == "SiameseTower") == 1


def test_id_token_is_used_only_for_known_items_and_dropped_in_training():
    torch.manual_seed(0)
    # No feature noise and no dropout: in training mode the ID token is the only thing left that can vary.
    fusion = ItemFusion(FusionConfig(n_items=4, id_dropout=0.5, feature_noise=0.0, dropout=0.0))
    text, image = _inputs(4)
    present = torch.ones(4, 2, dtype=torch.bool)
    ids, all_known, none_known = torch.arange(4), torch.ones(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool)
    fusion.eval()
    content_only = fusion(text, image, present, ids, none_known)
    with_id = fusion(text, image, present, ids, all_known)
    assert ((with_id - content_only).abs().amax(1) > 1e-3).all()
    torch.testing.assert_close(fusion(text, image, present, None, None), content_only)
    torch.testing.assert_close(fusion(text, image, present, ids, all_known), with_id)  # eval never drops

    fusion.train()
    runs = torch.stack([fusion(text, image, present, ids, all_known) for _ in range(40)])  # (runs, N, D)
    kept = (runs - with_id).abs().amax(-1) < 1e-5
    dropped = (runs - content_only).abs().amax(-1) < 1e-5
    assert (kept ^ dropped).all()  # each item, each step: exactly its eval vector with or without its ID
    assert 0.3 < dropped.float().mean() < 0.7  # id_dropout=0.5 of 160 draws
    for _ in range(5):  # unknown items never get an ID token, in training either
        torch.testing.assert_close(fusion(text, image, present, ids, none_known), content_only)
    # An item whose only signal is its ID keeps it even in training (an all-masked row would carry nothing).
    nothing = torch.zeros(4, 2, dtype=torch.bool)
    fusion.eval()
    id_only = fusion(text, image, nothing, ids, all_known)
    fusion.train()
    for _ in range(5):
        torch.testing.assert_close(fusion(text, image, nothing, ids, all_known), id_only)


def test_attention_weights_ignore_masked_tokens():
    attention = ModalityAttention(8, 3, heads=2)
    tokens = torch.randn(2, 3, 8)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    pooled, weights = attention(tokens, mask)  # weights: (N, tokens, heads)
    assert (weights[0, 1] == 0).all() and torch.allclose(weights[0].sum(0), torch.ones(2))
    assert pooled.shape == (2, 8) and (pooled[1] == 0).all()


def test_alignment_loss_learns_to_pair_real_titles_and_posters(real_items):
    """Contrastive training makes each real movie's title+genres retrieve its own poster and vice versa, sequels
    (Star Wars, Lord of the Rings, Toy Story) included; an untrained tower pairs them at about chance."""
    text, image = real_items
    n = len(text)
    torch.manual_seed(0)
    fusion = ItemFusion(FusionConfig())

    def retrieval_accuracy() -> tuple[float, float]:
        fusion.eval()
        with torch.no_grad():
            t, i = fusion.modality_vectors(text, image)
        fusion.train()
        similarity = t @ i.T
        hits = torch.arange(n)
        text_to_poster = (similarity.argmax(1) == hits).float().mean().item()
        return text_to_poster, (similarity.argmax(0) == hits).float().mean().item()

    assert max(retrieval_accuracy()) <= 0.25
    optimizer = torch.optim.Adam(fusion.parameters(), lr=1e-3)
    before = fusion.alignment_loss(text, image).item()
    for _ in range(30):
        loss = fusion.alignment_loss(text, image)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < before / 4
    assert min(retrieval_accuracy()) >= 0.9  # text -> poster and poster -> text


def test_config_is_validated():
    with pytest.raises(ValueError, match="id_dropout"):
        FusionConfig(id_dropout=1.0)
    with pytest.raises(ValueError, match="at least one"):
        FusionConfig(text_dim=0, image_dim=0, n_items=0)


def test_feature_noise_perturbs_training_only():
    torch.manual_seed(0)
    text, image, present = torch.randn(6, 384), torch.rand(6, 1280), torch.ones(6, 2, dtype=torch.bool)
    noisy = ItemFusion(FusionConfig(feature_noise=0.5, id_dropout=0.0))
    noisy.eval()
    assert torch.equal(noisy(text, image, present), noisy(text, image, present))
    noisy.train()
    assert not torch.allclose(noisy(text, image, present), noisy(text, image, present))
    clean = ItemFusion(FusionConfig(feature_noise=0.0, id_dropout=0.0))
    clean.train()
    assert torch.equal(clean(text, image, present), clean(text, image, present))
