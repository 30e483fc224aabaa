"""Caption banks, caption scoring with a fake text embedder, and the summary."""
import numpy as np
import pytest

from failmap.captions import (SummaryRow, caption_bank, names_attribute, planted_attribute_hits,
                              reference_caption, score_captions, summary_markdown, top_captions,
                              write_summary_markdown)
from failmap.svm import Preprocessor, fit_class_svm

TEMPLATE = "a photo of a {adjective} {noun} {context}"
COLOURS = ["red", "orange", "yellow", "green", "blue", "purple", "white"]
CONTEXTS = ["on the grass", "indoors", "in the snow", "on the water", "at night", "on the sand"]
D = 24


def test_bank_has_every_combination_with_empty_slots():
    bank = caption_bank(TEMPLATE, "circle", COLOURS, CONTEXTS)
    assert len(bank) == (7 + 1) * (6 + 1) == len(set(bank))
    assert bank[0] == "a photo of a circle" == reference_caption(TEMPLATE, "circle")
    assert bank[1] == "a photo of a circle on the grass"
    assert "a photo of a red circle" in bank and "a photo of a white circle on the sand" in bank
    assert all("  " not in c and c == c.strip() for c in bank)
    assert bank == caption_bank(TEMPLATE, "circle", COLOURS, CONTEXTS)  # deterministic order


def test_bank_with_none_values_and_duplicates():
    assert caption_bank(TEMPLATE, "star", None, None) == ["a photo of a star"]
    bank = caption_bank(TEMPLATE, "star", [None, "red", "red", ""], ["indoors", None])
    assert bank == ["a photo of a star", "a photo of a star indoors",
                    "a photo of a red star", "a photo of a red star indoors"]
    with pytest.raises(ValueError, match="no {noun} slot"):
        caption_bank("a photo of a {adjective} thing", "star", COLOURS, None)
    with pytest.raises(ValueError, match="may only use"):
        caption_bank("a {colour} {noun}", "star", COLOURS, None)


def _fitted_svm_with_known_direction(seed=0):
    """Embeddings where the model fails on images shifted along u."""
    rng = np.random.default_rng(seed)
    mean, scale = rng.normal(0, 1, D), rng.uniform(0.5, 1.5, D)
    u = rng.normal(size=D)
    u /= np.linalg.norm(u)
    X_train = mean + scale * rng.normal(size=(1500, D))
    hard = rng.random(600) < 0.25
    X = mean + scale * rng.normal(size=(600, D))
    X[hard] += 3 * scale * u
    correct = np.where(hard, rng.random(600) < 0.2, rng.random(600) < 0.95)
    pre = Preprocessor.fit(X_train)
    return pre, fit_class_svm(X, correct, pre, [1e-3, 1e-2, 1e-1, 1.0], 2, 0, 5000), mean, scale * u


def _fake_embedder(base, hard_shift, rng):
    """Text embedding = base + sum of per-word vectors; 'snow' moves towards the
    failing images, 'sand' away from them, every other word a small random way."""
    words = {"snow": hard_shift, "sand": -hard_shift}
    calls = []

    def embed_texts(texts):
        calls.append(list(texts))
        out = []
        for text in texts:
            v = base.copy()
            for word in text.split():
                if word not in words:
                    words[word] = 0.05 * rng.normal(size=D)
                v = v + words[word]
            out.append(v)
        return np.array(out)
    return embed_texts, calls


@pytest.mark.parametrize("subtract_mean", [True, False])
def test_caption_on_the_hard_side_scores_lowest(subtract_mean):
    pre, svm, mean, shift = _fitted_svm_with_known_direction()
    embed_texts, calls = _fake_embedder(mean, shift, np.random.default_rng(1))
    bank = caption_bank(TEMPLATE, "circle", COLOURS, CONTEXTS)
    ref = reference_caption(TEMPLATE, "circle")
    scores = score_captions(bank, embed_texts, ref, pre, svm, subtract_mean=subtract_mean)
    assert scores.shape == (len(bank),) and len(calls) == 1  # one batched embedding call
    top = top_captions(bank, scores, k=7)
    assert all(names_attribute(item["caption"], "snow")[0] for item in top["hard"])
    assert all(names_attribute(item["caption"], "sand")[0] for item in top["easy"])
    assert [i["score"] for i in top["hard"]] == sorted(i["score"] for i in top["hard"])
    assert [i["score"] for i in top["easy"]] == sorted((i["score"] for i in top["easy"]), reverse=True)


def test_score_captions_matches_manual_computation():
    pre, svm, mean, shift = _fitted_svm_with_known_direction()
    embed_texts, _ = _fake_embedder(mean, shift, np.random.default_rng(2))
    bank = ["a photo of a red circle", "a photo of a circle in the snow"]
    ref = "a photo of a circle"
    E = embed_texts(bank + [ref])
    expected = pre.transform(E[:2] - E[2]) @ svm.weight + svm.intercept
    np.testing.assert_allclose(score_captions(bank, embed_texts, ref, pre, svm), expected)


def test_score_captions_rejects_wrong_dimension():
    pre, svm, _, _ = _fitted_svm_with_known_direction()
    with pytest.raises(ValueError, match="expected \\(2, 24\\)"):
        score_captions(["a"], lambda texts: np.zeros((len(texts), 8)), "b", pre, svm)
    with pytest.raises(ValueError, match="empty"):
        score_captions([], lambda texts: np.zeros((len(texts), D)), "b", pre, svm)


def test_top_captions_ties_and_bounds():
    top = top_captions(["a", "b", "c"], [1.0, 0.0, 1.0], k=5)
    assert [i["caption"] for i in top["hard"]] == ["b", "a", "c"]
    assert [i["caption"] for i in top["easy"]] == ["a", "c", "b"]
    with pytest.raises(ValueError, match="shape"):
        top_captions(["a"], [1.0, 2.0], 1)


def test_names_attribute_matches_whole_words():
    caps = ["a photo of a red circle on the grass", "a photo of a circle on grassland", "GRASS", "a green star"]
    np.testing.assert_array_equal(names_attribute(caps, "grass"), [True, False, True, False])
    np.testing.assert_array_equal(names_attribute(caps, "on the grass"), [True, False, False, False])
    np.testing.assert_array_equal(names_attribute(caps, "red"), [True, False, False, False])
    with pytest.raises(ValueError, match="non-empty"):
        names_attribute(caps, " ")


def test_planted_attribute_hits():
    top_hard = {"circle": ["a circle in the snow", "a red circle", "x", "a circle at night"],
                "square": ["a square", "a blue square", "a square at night", "a square in the snow"]}
    hits = planted_attribute_hits(top_hard, {"circle": "snow", "square": "snow"}, k=3)
    assert hits == {"per_class": {"circle": True, "square": False}, "fraction": 0.5}


def test_summary_markdown(tmp_path):
    rows = [SummaryRow("circle", 0.71, 0.8, 0.65, ["a circle in the snow", "a | b", "c", "d"], ["e"], "snow"),
            SummaryRow("square", skip_reason="0 wrong and 500 correct predictions")]
    text = summary_markdown(rows)
    lines = text.splitlines()
    assert lines[2] == ("| class | planted | test bal. acc | test AUROC | subpop AP | top 3 hard captions "
                        "| top 3 easy captions |")
    assert "| circle | snow | 0.710 | 0.800 | 0.650 | a circle in the snow<br>a \\| b<br>c | e |" in lines
    assert "| square | — | — | — | — | skipped: 0 wrong and 500 correct predictions | — |" in lines
    write_summary_markdown(tmp_path / "s.md", rows)
    assert (tmp_path / "s.md").read_text() == text
