"""Where a class's candidate captions come from (``caption.sources``).

A bank is the union, in the order the sources are listed, of:

- ``template``: ``caption.template`` filled with the class name as the noun and
  every adjective x context of the attribute vocabularies (the reference
  method's bank, and today's default);
- ``subtypes``: the same template with each *sub-type noun* of the class in
  place of the class name: the names the data source itself gives its
  sub-types (CIFAR-100's fine labels per superclass, a superclass world's
  member shapes, an image folder's ``subtype`` column: the vocabulary of
  members, never which member fails) plus the user's ``caption.subtypes``;
- ``wordnet``: the same template with each direct WordNet hyponym of the class
  name (needs nltk and its wordnet corpus, which the default install lacks);
- ``file``: the lines of ``caption.file`` (``caption`` for every class, or
  ``class<TAB>caption`` for one);
- ``corpus``: the captions of the data's own captioned corpus split whose
  image has the class's label, deduplicated.

Template-made candidates keep their slot values, so that the caption stage
can say which slot carries a caption's score (``captions.slot_effects``);
captions from a file or the corpus are free text and have none. Everything
that can be wrong with a source (an unreadable or empty file, a class the data
lack, WordNet asked for but absent) is refused by ``check_sources`` before any
model is loaded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from failmap.captions import agree_articles, fill_caption

SOURCES = ("template", "subtypes", "wordnet", "file", "corpus")
TEMPLATE_SOURCES = ("template", "subtypes", "wordnet")  # the ones that fill caption.template (slot values known)
WORDNET_HINT = "pip install nltk && python -m nltk.downloader wordnet"


@dataclass(frozen=True)
class Candidate:
    """One caption of a class's bank and where it came from. ``noun`` is None
    for free text (file, corpus); then ``adjective`` and ``context`` are too."""
    text: str
    source: str
    noun: str | None = None
    adjective: str | None = None
    context: str | None = None

    @property
    def slots(self) -> dict[str, str]:
        """The filled slots of a template-made caption ({} for free text)."""
        if self.noun is None:
            return {}
        return {k: v for k, v in (("noun", self.noun), ("adjective", self.adjective),
                                  ("context", self.context)) if v is not None}


def template_candidates(template: str, nouns: Sequence[str], adjectives: Sequence[str | None] | None,
                        contexts: Sequence[str | None] | None, source: str) -> list[Candidate]:
    """The template filled with every noun x (adjective or none) x (context or none),
    noun-major, then adjective, then context, the empty value first."""
    adjective_options = [None] + [a for a in (adjectives or []) if a]
    context_options = [None] + [c for c in (contexts or []) if c]
    return [Candidate(fill_caption(template, noun, adjective, context), source, noun, adjective, context)
            for noun in nouns for adjective in adjective_options for context in context_options]


def read_caption_file(path: str | Path, classes: Sequence[str], key: str = "caption.file") -> dict[str | None, list[str]]:
    """A caption file: one caption per line, or ``class<TAB>caption`` for one
    class; blank lines and lines starting with ``#`` are skipped. Returns
    {class or None (every class): [captions]} with articles made to agree.
    Refuses a missing, unreadable or empty file and a class the data lack."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{key}: caption file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{key}: caption file {path} cannot be read as UTF-8 text ({err})") from None
    known = set(classes)
    out: dict[str | None, list[str]] = {}
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.strip().startswith("#"):
            continue
        name, caption = line.split("\t", 1) if "\t" in line else (None, line)
        if name is not None:
            name = name.strip()
            if name not in known:
                raise ValueError(f"{key}: {path} line {line_no} names class {name!r}, which the data lack "
                                 f"(classes: {', '.join(classes)})")
        caption = " ".join(caption.split())
        if not caption:
            raise ValueError(f"{key}: {path} line {line_no} has a class but no caption after the tab")
        out.setdefault(name, []).append(agree_articles(caption))
    if not out:
        raise ValueError(f"{key}: caption file {path} holds no caption (only blank or # lines); expected one "
                         f"caption per line, optionally 'class<TAB>caption'")
    return out


def wordnet_available() -> bool:
    """Whether nltk and its wordnet corpus can be loaded (offline)."""
    try:
        from nltk.corpus import wordnet
        wordnet.synsets("dog")
    except Exception:  # ImportError, or nltk's LookupError when the corpus is absent
        return False
    return True


def wordnet_hyponyms(noun: str) -> list[str]:
    """The direct hyponyms of every noun sense of ``noun`` (one level down:
    "dog" gives "puppy", "hunting dog", ... not every breed), as words."""
    from nltk.corpus import wordnet
    names: dict[str, None] = {}
    for synset in wordnet.synsets(noun.replace(" ", "_"), pos=wordnet.NOUN):
        for hyponym in synset.hyponyms():
            for lemma in hyponym.lemma_names():
                names.setdefault(lemma.replace("_", " "))
    return list(names)


def data_subtypes(meta: Mapping, user: Mapping[str, Sequence[str]] | None, classes: Sequence[str],
                  key: str = "caption.subtypes") -> dict[str, list[str]]:
    """Sub-type nouns per class: the source's (``meta['subtypes']``) then the
    user's, deduplicated. Refuses a user class the data lack."""
    unknown = sorted(set(user or {}) - set(classes))
    if unknown:
        raise ValueError(f"{key}: class(es) {unknown} are not classes of the data (classes: {', '.join(classes)})")
    out = {}
    for name in classes:
        nouns = list(meta.get("subtypes", {}).get(name, [])) + list((user or {}).get(name, []))
        out[name] = list(dict.fromkeys(n for n in nouns if n and n != name))
    return out


def corpus_captions(captions: np.ndarray | None, labels: np.ndarray, n_classes: int) -> list[list[str]]:
    """Per class, its corpus images' captions, deduplicated in corpus order."""
    if captions is None:
        raise ValueError("caption.sources lists corpus, but the prepared data have no captioned corpus split "
                         "(world: always; imagefolder: set data.captions_file)")
    out = [dict() for _ in range(n_classes)]
    for caption, label in zip(captions, labels):
        out[int(label)].setdefault(agree_articles(" ".join(str(caption).split())))
    return [list(d) for d in out]


@dataclass
class BankSources:
    """Everything the sources need, checked: ``bank(k, name)`` builds a class's bank."""
    sources: Sequence[str]
    template: str
    adjectives: Sequence[str] | None
    contexts: Sequence[str] | None
    subtypes: dict[str, list[str]] = field(default_factory=dict)
    wordnet: dict[str, list[str]] = field(default_factory=dict)
    file: dict[str | None, list[str]] = field(default_factory=dict)
    corpus: list[list[str]] = field(default_factory=list)

    def bank(self, k: int, name: str) -> list[Candidate]:
        """Class ``name``'s (label ``k``) candidates, each text once (the first source that made it)."""
        made: list[Candidate] = []
        for source in self.sources:
            if source == "template":
                made += template_candidates(self.template, [name], self.adjectives, self.contexts, source)
            elif source in ("subtypes", "wordnet"):
                nouns = (self.subtypes if source == "subtypes" else self.wordnet).get(name, [])
                made += template_candidates(self.template, nouns, self.adjectives, self.contexts, source)
            elif source == "file":
                made += [Candidate(t, source) for t in self.file.get(None, []) + self.file.get(name, [])]
            elif source == "corpus":
                made += [Candidate(t, source) for t in self.corpus[k]]
            else:
                raise ValueError(f"caption.sources: unknown source {source!r}; known: {', '.join(SOURCES)}")
        unique: dict[str, Candidate] = {}
        for candidate in made:
            unique.setdefault(candidate.text, candidate)
        return list(unique.values())


def check_sources(sources: Sequence[str], *, template: str, adjectives, contexts, classes: Sequence[str],
                  meta: Mapping, user_subtypes: Mapping[str, Sequence[str]] | None = None,
                  caption_file: str | None = None, corpus_split=None) -> BankSources:
    """Read and check every listed source before any work; a clear error naming
    the params key for each thing that is wrong. ``corpus_split`` is the
    prepared corpus ``Split`` (only needed, and only read, for ``corpus``)."""
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise ValueError(f"caption.sources: unknown source(s) {unknown}; known: {', '.join(SOURCES)}")
    if not sources:
        raise ValueError(f"caption.sources is empty; list at least one of {', '.join(SOURCES)}")
    out = BankSources(list(sources), template, adjectives, contexts)
    if "subtypes" in sources:
        out.subtypes = data_subtypes(meta, user_subtypes, classes)
        if not any(out.subtypes.values()):
            raise ValueError(f"caption.sources lists subtypes, but no class has any: the data source "
                             f"({meta.get('source')}) names no sub-types and caption.subtypes is empty")
    elif user_subtypes:
        raise ValueError("caption.subtypes is set but caption.sources does not list subtypes")
    if "wordnet" in sources:
        if not wordnet_available():
            raise ValueError(f"caption.sources lists wordnet, but nltk's WordNet is not installed here ({WORDNET_HINT}); "
                             f"it is optional: drop wordnet from caption.sources")
        out.wordnet = {name: [n for n in wordnet_hyponyms(name) if n != name] for name in classes}
    if "file" in sources:
        if caption_file is None:
            raise ValueError("caption.sources lists file, but caption.file is null")
        out.file = read_caption_file(caption_file, classes)
    elif caption_file is not None:
        raise ValueError(f"caption.file is {caption_file!r} but caption.sources does not list file")
    if "corpus" in sources:
        if corpus_split is None:
            raise ValueError("caption.sources lists corpus, but the prepared data have no corpus split")
        out.corpus = corpus_captions(corpus_split.captions, corpus_split.labels, len(classes))
    return out
