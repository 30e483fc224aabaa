"""Caption banks, caption scoring with a fake text embedder, and the summary."""
import numpy as np
import yaml
from pathlib import Path
import pytest

from failmap.caption_sources import Candidate, check_sources, read_caption_file, template_candidates
from failmap.captions import (SummaryRow, agree_articles, cached_embed_texts, caption_bank, caption_shifts,
                              describe_class, mode_planted_hits, names_attribute, planted_attribute_hits,
                              read_hard_captions, read_mode_captions, reference_caption, retrieval_scorer,
                              score_captions, select_diverse, slot_effects, summary_markdown, top_captions,
                              write_hard_captions, write_summary_markdown)
from failmap.data import Split
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


# ------------------------------------------------------------------ articles

def test_articles_agree_with_the_next_word():
    assert agree_articles("a photo of a orange circle") == "a photo of an orange circle"
    assert agree_articles("a photo of an square in a igloo") == "a photo of a square in an igloo"
    assert agree_articles("A apple, an unicorn, a hour") == "An apple, a unicorn, an hour"
    assert agree_articles("a photo of a circle") == "a photo of a circle"
    assert agree_articles("banana and a") == "banana and a"  # no following word: left alone
    bank = caption_bank(TEMPLATE, "circle", ["orange", "red"], None)
    assert "a photo of an orange circle" in bank and "a photo of a red circle" in bank
    assert reference_caption(TEMPLATE, "owl") == "a photo of an owl"


# ------------------------------------------------------------------ sources

META = {"source": "world", "classes": ["round", "pointy"],
        "subtypes": {"round": ["circle", "moon"], "pointy": ["star", "cross"]}}


def _corpus():
    return Split(images=np.zeros((4, 2, 2, 3), np.uint8), labels=np.array([0, 1, 0, 0]),
                 ids=np.array(list("abcd")),
                 captions=np.array(["a photo of a moon", "a photo of a  star", "a photo of a moon", "a orange moon"]))


def test_each_source_adds_its_captions(tmp_path):
    f = tmp_path / "captions.txt"
    f.write_text("# a comment\na photo of a thing\n\npointy\ta photo of a orange spike\n")
    sources = check_sources(["template", "subtypes", "file", "corpus"], template=TEMPLATE, adjectives=["red"],
                            contexts=["indoors"], classes=META["classes"], meta=META,
                            user_subtypes={"round": ["disc", "moon"]}, caption_file=str(f), corpus_split=_corpus())
    bank = sources.bank(0, "round")
    by_source = {}
    for c in bank:
        by_source.setdefault(c.source, []).append(c.text)
    assert by_source["template"] == caption_bank(TEMPLATE, "round", ["red"], ["indoors"])
    # the data's sub-types first, then the user's, each noun once; every adjective x context
    assert by_source["subtypes"][:4] == ["a photo of a circle", "a photo of a circle indoors",
                                         "a photo of a red circle", "a photo of a red circle indoors"]
    assert len(by_source["subtypes"]) == 3 * 4 and "a photo of a red disc indoors" in by_source["subtypes"]
    assert by_source["file"] == ["a photo of a thing"]  # the per-class line belongs to pointy
    # corpus: this class's captions only, whitespace collapsed, articles fixed, deduplicated; the
    # one equal to a subtypes caption ("a photo of a moon") keeps its first source
    assert by_source["corpus"] == ["an orange moon"]
    assert len({c.text for c in bank}) == len(bank)
    pointy = [c.text for c in sources.bank(1, "pointy") if c.source == "file"]
    assert pointy == ["a photo of a thing", "a photo of an orange spike"]
    slotted = next(c for c in bank if c.text == "a photo of a red circle indoors")
    assert slotted.slots == {"noun": "circle", "adjective": "red", "context": "indoors"}
    assert next(c for c in bank if c.source == "file").slots == {}


def test_template_source_alone_is_todays_bank():
    sources = check_sources(["template"], template=TEMPLATE, adjectives=COLOURS, contexts=CONTEXTS,
                            classes=["circle"], meta={"source": "world"})
    assert [c.text for c in sources.bank(0, "circle")] == caption_bank(TEMPLATE, "circle", COLOURS, CONTEXTS)


@pytest.mark.parametrize("content, match", [
    ("", "holds no caption"),
    ("\n# only a comment\n", "holds no caption"),
    ("hexagon\ta photo of a hexagon\n", "line 1 names class 'hexagon', which the data lack"),
    ("round\t \n", "line 1 has a class but no caption"),
])
def test_caption_file_errors(tmp_path, content, match):
    f = tmp_path / "c.txt"
    f.write_text(content)
    with pytest.raises(ValueError, match=match):
        read_caption_file(f, META["classes"])


def test_caption_file_missing_or_unreadable(tmp_path):
    with pytest.raises(ValueError, match="caption.file: caption file .* does not exist"):
        read_caption_file(tmp_path / "nope.txt", META["classes"])
    binary = tmp_path / "b.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match="cannot be read as UTF-8"):
        read_caption_file(binary, META["classes"])
    with pytest.raises(ValueError, match="cannot be read"):
        read_caption_file(tmp_path, META["classes"])  # a folder


def test_source_errors_before_any_work(tmp_path, monkeypatch):
    common = dict(template=TEMPLATE, adjectives=None, contexts=None, classes=META["classes"])
    with pytest.raises(ValueError, match="unknown source.*'captions'"):
        check_sources(["template", "captions"], meta=META, **common)
    with pytest.raises(ValueError, match="caption.subtypes: class\\(es\\) \\['oval'\\]"):
        check_sources(["subtypes"], meta=META, user_subtypes={"oval": ["egg"]}, **common)
    with pytest.raises(ValueError, match="no class has any"):
        check_sources(["subtypes"], meta={"source": "cifar10"}, **common)
    with pytest.raises(ValueError, match="caption.file is null"):
        check_sources(["file"], meta=META, **common)
    with pytest.raises(ValueError, match="no captioned corpus"):
        check_sources(["corpus"], meta=META, corpus_split=Split(np.zeros((1, 2, 2, 3), np.uint8), np.zeros(1, int),
                                                                np.array(["a"])), **common)
    import failmap.caption_sources as cs
    monkeypatch.setattr(cs, "wordnet_available", lambda: False)
    with pytest.raises(ValueError, match="caption.sources lists wordnet, but nltk's WordNet is not installed"):
        check_sources(["template", "wordnet"], meta=META, **common)


def test_wordnet_request_on_this_install():
    from failmap.caption_sources import wordnet_available, wordnet_hyponyms
    common = dict(template=TEMPLATE, adjectives=None, contexts=None, classes=["dog"], meta={"source": "x"})
    if wordnet_available():  # an install with nltk + wordnet: real hyponyms
        assert "puppy" in wordnet_hyponyms("dog")
        assert check_sources(["wordnet"], **common).bank(0, "dog")
    else:  # the default install: a clear error naming the key, before any work
        with pytest.raises(ValueError, match="caption.sources lists wordnet.*python -m nltk.downloader wordnet"):
            check_sources(["wordnet"], **common)


def test_wordnet_source_uses_hyponyms_when_present(monkeypatch):
    import failmap.caption_sources as cs
    monkeypatch.setattr(cs, "wordnet_available", lambda: True)
    monkeypatch.setattr(cs, "wordnet_hyponyms", lambda noun: {"round": ["ring", "round"]}.get(noun, []))
    sources = check_sources(["wordnet"], template=TEMPLATE, adjectives=None, contexts=None,
                            classes=META["classes"], meta=META)
    assert [c.text for c in sources.bank(0, "round")] == ["a photo of a ring"]
    assert sources.bank(1, "pointy") == []


def test_params_refuse_bad_caption_sources():
    from failmap.params import ParamsError, overlay, params_from_dict
    default = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    with pytest.raises(ParamsError, match="caption.sources\\[1\\] = 'subtype': expected one of template"):
        params_from_dict(overlay(default, {"caption": {"sources": ["template", "subtype"]}}))
    with pytest.raises(ParamsError, match="caption.file = None: expected a path when caption.sources lists file"):
        params_from_dict(overlay(default, {"caption": {"sources": ["file"]}}))
    with pytest.raises(ParamsError, match="caption.file .*null, since caption.sources does not list file"):
        params_from_dict(overlay(default, {"caption": {"file": "x.txt"}}))
    with pytest.raises(ParamsError, match="caption.subtypes.*does not list subtypes"):
        params_from_dict(overlay(default, {"caption": {"subtypes": {"circle": ["ring"]}}}))
    with pytest.raises(ParamsError, match="caption.subtypes.circle"):
        params_from_dict(overlay(default, {"caption": {"sources": ["subtypes"], "subtypes": {"circle": "ring"}}}))
    with pytest.raises(ParamsError, match="caption.diversity"):
        params_from_dict(overlay(default, {"caption": {"diversity": 1.0}}))
    with pytest.raises(ParamsError, match="caption.score = 'zero_shot': expected one of direction \\| retrieval"):
        params_from_dict(overlay(default, {"caption": {"score": "zero_shot"}}))
    p = params_from_dict(overlay(default, {"caption": {"sources": ["template", "subtypes"], "subtypes": {"circle": ["ring"]}}}))
    assert p.caption.subtypes == {"circle": ["ring"]} and p.caption.diversity == 0.3


# ------------------------------------------------------------------ diversity

def test_diverse_selection_skips_paraphrases():
    # captions 0-2 say one thing (shifts along e0), 3 another (e1); scores rank 0 < 1 < 2 < 3 (hardest first)
    shifts = np.array([[1.0, 0.0], [0.99, 0.14], [0.98, 0.2], [0.0, 1.0], [0.7, 0.7]])
    scores = np.array([-3.0, -2.9, -2.8, -2.0, 5.0])
    assert select_diverse(scores, shifts, 3, 0.0) == [0, 1, 2]          # plain ranking
    assert select_diverse(scores, shifts, 3, 0.5)[:2] == [0, 3]         # the other idea comes second
    assert select_diverse(scores, shifts, 2, 0.5, side="easy") == [4, 3]
    top = top_captions(list("abcde"), scores, 2, shifts=shifts, diversity=0.5)
    assert [t["caption"] for t in top["hard"]] == ["a", "d"]
    for diversity in (0.0, 0.3, 0.9):  # the first pick is the top-scoring caption whatever the diversity
        assert select_diverse(scores, shifts, 1, diversity) == [0]
    with pytest.raises(ValueError, match="diversity must be in"):
        select_diverse(scores, shifts, 2, 1.0)


def test_diverse_top_captions_on_a_real_svm_are_less_alike():
    pre, svm, mean, shift = _fitted_svm_with_known_direction()
    embed_texts, _ = _fake_embedder(mean, shift, np.random.default_rng(3))
    bank = caption_bank(TEMPLATE, "circle", COLOURS, CONTEXTS)
    shifts = caption_shifts(bank, embed_texts, reference_caption(TEMPLATE, "circle"), D)
    scores = score_captions(bank, embed_texts, reference_caption(TEMPLATE, "circle"), pre, svm)

    def mean_cosine(idx):
        u = shifts[idx] / np.linalg.norm(shifts[idx], axis=1, keepdims=True)
        c = u @ u.T
        return c[np.triu_indices(len(idx), 1)].mean()
    plain, diverse = select_diverse(scores, shifts, 5, 0.0), select_diverse(scores, shifts, 5, 0.5)
    assert plain[0] == diverse[0]
    assert mean_cosine(diverse) < mean_cosine(plain)


# ------------------------------------------------------------------ per-slot attribution

def test_slot_effects_name_the_slot_that_carries_the_score():
    pre, svm, mean, shift = _fitted_svm_with_known_direction()
    embed_texts, _ = _fake_embedder(mean, shift, np.random.default_rng(4))
    # the fake embedder: "snow" moves towards the failing images; make the sub-type noun "igloo" do so too
    ref = reference_caption(TEMPLATE, "circle")
    context_carried = Candidate("a photo of a red circle in the snow", "template", "circle", "red", "in the snow")

    def embed_with_igloo(texts):
        out = embed_texts(texts)
        return out + np.array([2 * shift if "igloo" in t.split() else 0 * shift for t in texts])
    cands = template_candidates(TEMPLATE, ["igloo"], ["red"], ["indoors"], "subtypes")
    noun_carried = next(c for c in cands if c.text == "a photo of a red igloo indoors")
    cands = [context_carried, noun_carried, Candidate("a free text caption", "file")]
    texts = [c.text for c in cands]
    scores = score_captions(texts, embed_with_igloo, ref, pre, svm)
    effects = slot_effects(cands, scores, "hard", TEMPLATE, "circle",
                           lambda t: score_captions(t, embed_with_igloo, ref, pre, svm))
    assert effects[0]["carried_by"] == "context" and set(effects[0]["slot_effect"]) == {"adjective", "context"}
    assert effects[1]["carried_by"] == "noun" and set(effects[1]["slot_effect"]) == {"noun", "adjective", "context"}
    assert effects[2] == {"carried_by": None, "slot_effect": {}}
    # on the easy side the sign flips: removing "snow" makes the caption less hard, i.e. *more* easy
    easy = slot_effects(cands[:1], scores[:1], "easy", TEMPLATE, "circle",
                        lambda t: score_captions(t, embed_with_igloo, ref, pre, svm))
    assert easy[0]["slot_effect"]["context"] == pytest.approx(-effects[0]["slot_effect"]["context"])


def test_describe_class_and_hard_captions_file(tmp_path):
    pre, svm, mean, shift = _fitted_svm_with_known_direction()
    embed_texts, _ = _fake_embedder(mean, shift, np.random.default_rng(5))
    sources = check_sources(["template"], template=TEMPLATE, adjectives=COLOURS, contexts=CONTEXTS,
                            classes=["circle", "square"], meta={"source": "world"})
    out = describe_class(sources.bank(0, "circle"), embed_texts, TEMPLATE, "circle", pre, svm, 4, 0.3)
    assert len(out["hard"]) == len(out["easy"]) == len(out["ranked_hard"]) == 4
    assert out["hard"][0]["caption"] == out["ranked_hard"][0]
    first = out["hard"][0]
    assert first["source"] == "template" and "snow" in first["caption"] and first["carried_by"] == "context"
    write_hard_captions(tmp_path / "hard.json", {"circle": out})
    assert read_hard_captions(tmp_path / "hard.json", ["circle", "square"]) == \
        {0: [t["caption"] for t in out["hard"]]}
    assert read_mode_captions(tmp_path / "hard.json", ["circle", "square"]) == {}
    with pytest.raises(ValueError, match="not classes of the prepared data"):
        read_hard_captions(tmp_path / "hard.json", ["square"])
    with pytest.raises(FileNotFoundError, match="run the caption stage"):
        read_hard_captions(tmp_path / "none.json", ["circle"])


def test_summary_marks_the_carrying_slot():
    rows = [SummaryRow("circle", hard=["a moon", "b"], easy=["c"], hard_carried_by=["noun", None])]
    assert "a moon *(noun)*<br>b | c |" in summary_markdown(rows)


def test_a_mode_is_captioned_by_its_own_score_and_written_with_its_share(tmp_path):
    """describe_class takes a failure mode where it takes the SVM: the mode pointing
    at the known shift ranks the captions that carry it hardest."""
    from failmap.modes import Mode

    pre, svm, mean, shift = _fitted_svm_with_known_direction()
    embed_texts, _ = _fake_embedder(mean, shift, np.random.default_rng(5))
    sources = check_sources(["template"], template=TEMPLATE, adjectives=COLOURS, contexts=CONTEXTS,
                            classes=["circle", "square"], meta={"source": "world"})
    # a mode "looks like" the SVM's hard side: its weight is minus the SVM's
    mode = Mode(weight=-svm.weight, center=np.zeros(pre.dim), preprocessor=pre, n_errors=6, share=0.6)
    by_svm = describe_class(sources.bank(0, "circle"), embed_texts, TEMPLATE, "circle", pre, svm, 4, 0.0)
    by_mode = describe_class(sources.bank(0, "circle"), embed_texts, TEMPLATE, "circle", pre, mode, 4, 0.0)
    assert [t["caption"] for t in by_mode["hard"]] == [t["caption"] for t in by_svm["hard"]]
    assert "snow" in by_mode["hard"][0]["caption"]
    other = Mode(weight=svm.weight, center=np.zeros(pre.dim), preprocessor=pre, n_errors=4, share=0.4)
    by_other = describe_class(sources.bank(0, "circle"), embed_texts, TEMPLATE, "circle", pre, other, 4, 0.0)
    write_hard_captions(tmp_path / "hard.json", {"circle": by_svm},
                        {"circle": [{"share": 0.6, **by_mode}, {"share": 0.4, **by_other}]})
    modes = read_mode_captions(tmp_path / "hard.json", ["circle", "square"])
    assert [share for share, _ in modes[0]] == [0.6, 0.4]
    assert modes[0][0][1] == [t["caption"] for t in by_mode["hard"]] and modes[0][1][1][0] != modes[0][0][1][0]
    hits = mode_planted_hits({"circle": [modes[0][1][1], modes[0][0][1]]}, {"circle": "snow"}, k=1)
    assert hits["top_mode"]["per_class"] == {"circle": False} and hits["any_mode"]["per_class"] == {"circle": True}
    (tmp_path / "old.json").write_text('{"circle": ["a photo of a circle"]}')
    with pytest.raises(ValueError, match="keys 'svm' and 'modes'"):
        read_hard_captions(tmp_path / "old.json", ["circle"])


def _red_and_purple_hearts(seed=0, d=8):
    """A class whose easy images are red, whose hard ones are purple, and a text
    tower whose 'blue' points further from red than its 'purple' does, though
    CLIP still reads purple images as purple: the text shift of "blue" lines up
    with the image direction better than the right word's does."""
    e, rng = np.eye(d), np.random.default_rng(seed)

    def unit(v):
        return v / np.linalg.norm(v, axis=-1, keepdims=True)
    easy, hard = unit(e[0] + 0.3 * rng.normal(size=(80, d))), unit(e[1] + 0.3 * rng.normal(size=(20, d)))
    words = {"red": unit(e[0] + 0.5 * e[3]), "purple": unit(0.6 * e[1] + 0.8 * e[4]),
             "blue": unit(0.45 * e[1] - 0.9 * e[0] + 0.5 * e[5])}

    def embed_texts(texts):
        return np.array([unit(0.2 * e[-1] + sum((words[w] for w in t.split() if w in words), np.zeros(d)))
                         for t in texts])
    pre = Preprocessor(mean=np.zeros(d), std=np.ones(d))
    center = pre.transform(easy).mean(0)
    from failmap.modes import Mode
    mode = Mode(weight=pre.transform(hard).mean(0) - center, center=center, preprocessor=pre, n_errors=20, share=1.0)
    return easy, hard, embed_texts, pre, mode


def test_retrieval_names_what_clip_reads_in_the_hard_images_where_the_text_shift_misleads():
    easy, hard, embed_texts, pre, mode = _red_and_purple_hearts()
    template = "a photo of a {adjective} {noun}"
    bank = check_sources(["template"], template=template, adjectives=["red", "purple", "blue"], contexts=None,
                         classes=["heart"], meta={"source": "world"}).bank(0, "heart")
    texts = [b.text for b in bank]
    read_as = np.bincount((hard @ embed_texts(texts).T).argmax(1), minlength=len(texts))
    assert read_as.argmax() == texts.index("a photo of a purple heart")  # CLIP reads the hard images as purple
    by_direction = describe_class(bank, embed_texts, template, "heart", pre, mode, 2, 0.0)
    assert by_direction["hard"][0]["caption"] == "a photo of a blue heart"  # the failure retrieval fixes
    images = np.vstack([easy, hard])
    by_retrieval = describe_class(bank, embed_texts, template, "heart", pre, mode, 2, 0.0, retrieval=(images, 30.0))
    assert by_retrieval["hard"][0]["caption"] == "a photo of a purple heart"
    assert by_retrieval["hard"][0]["carried_by"] == "adjective"
    assert by_retrieval["easy"][0]["caption"] == "a photo of a red heart"


def test_retrieval_scorer_is_a_correlation_with_the_decision_value():
    easy, hard, embed_texts, _, mode = _red_and_purple_hearts(seed=1)
    images = np.vstack([easy, hard])
    bank = embed_texts(["red", "purple", "blue"])
    score = retrieval_scorer(images, bank, mode.decision_function(images), 30.0)
    s = score(bank)
    assert s.shape == (3,) and np.all(np.abs(s) <= 1 + 1e-9) and s[0] > 0 > s[1]
    # a positive rescaling of the decision values changes nothing; flipping them flips every score
    assert np.allclose(retrieval_scorer(images, bank, 5 * mode.decision_function(images), 30.0)(bank), s)
    assert np.allclose(retrieval_scorer(images, bank, -mode.decision_function(images), 30.0)(bank), -s)
    assert np.allclose(score(bank[[1]]), s[[1]])  # a caption scored alone: against the bank's normaliser
    assert retrieval_scorer(images, bank, np.zeros(len(images)), 30.0)(bank).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="one decision value each"):
        retrieval_scorer(images, bank, np.zeros(3), 30.0)


def test_cached_embed_texts_embeds_each_text_once_and_describe_class_reads_the_bank_once():
    easy, hard, embed_texts, pre, mode = _red_and_purple_hearts()
    calls = []

    def counting(texts):
        calls.append(list(texts))
        return embed_texts(texts)
    cached = cached_embed_texts(counting)
    out = cached(["a", "red", "a", "purple"])
    assert np.array_equal(out, embed_texts(["a", "red", "a", "purple"])) and calls == [["a", "red", "purple"]]
    assert np.array_equal(cached(["purple", "red"]), embed_texts(["purple", "red"])) and len(calls) == 1
    assert cached([]).shape[0] == 0
    assert cached_embed_texts(cached) is cached  # one cache, not one wrapped in another

    template = "a photo of a {adjective} {noun}"
    bank = check_sources(["template"], template=template, adjectives=["red", "purple", "blue"], contexts=None,
                         classes=["heart"], meta={"source": "world"}).bank(0, "heart")
    texts = [b.text for b in bank]
    images = np.vstack([easy, hard])
    calls.clear()
    shared = cached_embed_texts(counting)
    for retrieval in (None, (images, 30.0)):  # the stage scores one bank for the SVM and every mode
        plain = describe_class(bank, embed_texts, template, "heart", pre, mode, 2, 0.0, retrieval=retrieval)
        assert describe_class(bank, shared, template, "heart", pre, mode, 2, 0.0, retrieval=retrieval) == plain
    embedded = [t for call in calls for t in call]
    assert sorted(embedded) == sorted(set(embedded)) and set(texts) <= set(embedded)
