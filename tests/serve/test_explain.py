"""``explain``: the weights are the score drop when an event is left out (checked through ``score(history=...)``,
a separate path), the top event matters more than a random one, and text events carry keyphrases."""

import numpy as np
import pytest

from mmrec.serve.explain import explained_window

from .conftest import history_of


def _logit(p):
    p = np.asarray(p, dtype=np.float64)
    return np.log(p) - np.log1p(-p)


def _users_with_history(rec, minimum=5):
    logs = rec.store.user_events([str(u) for u in range(1, 151)])
    return [u for u, log in logs.items() if len(explained_window(rec.folder, log)[0]) >= minimum]


def test_weights_are_the_score_drop_without_each_event(trained):
    _, _, rec, _ = trained
    rng = np.random.default_rng(0)
    top_beats_random, cases = 0, 0
    for user in _users_with_history(rec)[:25]:
        item = rec.recommend(user, k=1)[0][0]
        window, _ = explained_window(rec.folder, rec.store.user_events([user])[user])
        reasons = rec.explain(user, [item], top=len(window))[0]
        # the score of the full window and of the window without each event, through score(history=...)
        history = history_of(window)
        full = _logit(rec.score(history=history, item_ids=[item]))[0]
        without = np.array([_logit(rec.score(history=history[:i] + history[i + 1:], item_ids=[item]))[0]
                            for i in range(len(history))])
        drops = full - without
        by_event = {(r.item_id, r.event, r.timestamp, r.text): r.weight for r in reasons}
        for i, event in enumerate(window):
            if (event[1], event[2], event[0], event[3]) in by_event:
                assert by_event[(event[1], event[2], event[0], event[3])] == pytest.approx(drops[i], abs=2e-4)
        assert [r.weight for r in reasons] == sorted((r.weight for r in reasons), reverse=True)
        assert all(r.weight > 0 for r in reasons)  # only events that raise the score, all of those that clearly do
        assert {(e[1], e[2], e[0], e[3]) for e, d in zip(window, drops) if d > 1e-3} <= by_event.keys()
        # faithfulness: leaving out the top-weighted event lowers the score more than leaving out a random other one
        best = int(np.argmax(drops))
        other = int(rng.choice([i for i in range(len(window)) if i != best]))
        top_beats_random += drops[best] > drops[other]
        cases += 1
    print(f"faithfulness: the top-weighted event beats a random one in {top_beats_random} of {cases} cases")
    assert cases >= 20 and top_beats_random / cases >= 0.8


def test_text_events_come_with_their_keyphrases(trained):
    _, _, rec, _ = trained
    logs = rec.store.user_events([str(u) for u in range(1, 151)])
    tagged = [u for u, log in logs.items() if any(e[3] for e in explained_window(rec.folder, log)[0])]
    assert tagged, "the serving fixture has tag events"
    found = []
    for user in tagged[:10]:
        items = [i for i, _ in rec.recommend(user, k=20)]
        found += [r for why in rec.explain(user, items, top=50) for r in why if r.text]
    assert found and all(r.event == "tag" and r.keyphrases for r in found)


def test_recommend_can_explain_each_item(trained):
    _, _, rec, _ = trained
    user = _users_with_history(rec)[0]
    plain = rec.recommend(user, k=5)
    explained = rec.recommend(user, k=5, explain=True)
    assert [(i, p) for i, p, _ in explained] == plain
    assert all(0 < len(why) <= 3 for _, _, why in explained)
    assert rec.explain("a-user-never-seen", [plain[0][0]]) == [[]]
    with pytest.raises(ValueError, match="top"):
        rec.explain(user, [plain[0][0]], top=0)
    with pytest.raises(KeyError, match="no-such-item"):
        rec.explain(user, ["no-such-item"])
