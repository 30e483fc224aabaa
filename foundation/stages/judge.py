"""Stage judge: the shape judge, a small CNN trained on the unbiased corpus to
name the shape, so that the decoder's shapes are scored by a model that is
neither CLIP nor a task's biased baseline."""
import numpy as np

from failmap.foundation import CORPUS_DIR, METRICS_DIR, WORK_DIR, corpus_spec, load_corpus, load_foundation_params
from failmap.foundation_eval import judge_accuracy, train_judge, visible_mask
from failmap.io import write_json
from failmap.models import save_classifier

EPOCHS = 3  # on the whole corpus; on 20,000 images for 3 epochs it confused squares and diamonds (84 %)


def main():
    p = load_foundation_params()
    spec = corpus_spec(p)
    judge = train_judge(load_corpus(CORPUS_DIR, "train"), spec.shapes, epochs=EPOCHS, seed=p.seed)
    save_classifier(judge, f"{WORK_DIR}/judge.pt", arch="small_cnn", n_classes=len(spec.shapes), width=32,
                    classes=spec.shapes)
    heldout = load_corpus(CORPUS_DIR, "heldout")
    labels = np.array([spec.shapes.index(s) for s in heldout["shape"]])
    visible = visible_mask(heldout["colour"], heldout["context"])
    write_json(f"{METRICS_DIR}/judge.json", dict(
        all=judge_accuracy(judge, heldout["images"], labels, spec.shapes),
        visible=judge_accuracy(judge, heldout["images"][visible], labels[visible], spec.shapes)))


if __name__ == "__main__":
    main()
