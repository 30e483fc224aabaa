"""Stage corpus: render the foundation corpus and a held-out set, every shape,
colour and context of the world uniform and independent."""
from failmap.foundation import CORPUS_DIR, CORPUS_STREAMS, corpus_spec, load_foundation_params, render_corpus, save_corpus


def main():
    p = load_foundation_params()
    spec = corpus_spec(p)
    for part, n in (("train", p.corpus.n_train), ("heldout", p.corpus.n_heldout)):
        save_corpus(CORPUS_DIR, part, *render_corpus(spec, n, p.seed, CORPUS_STREAMS[part], desc=f"corpus {part}"))


if __name__ == "__main__":
    main()
