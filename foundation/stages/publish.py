"""Stage publish: copy the built CLIP and decoder, each checked against its
model card, to models/pretrained/, where the main pipeline loads them.

models/pretrained/ is deliberately not a DVC output of this pipeline: the main
pipeline's stages depend on it, and were it an output here, `dvc repro` of the
main pipeline would rebuild the foundation models (hours) whenever this
pipeline's cached corpus is absent, as on every fresh clone."""
from failmap.foundation import CLIP_NAME, DECODER_NAME, publish


def main():
    clip, decoder = publish(CLIP_NAME), publish(DECODER_NAME)
    if decoder["clip"]["space"] != clip["space"]:
        raise SystemExit(f"the built decoder was trained on CLIP space {decoder['clip']['space']!r}, the built CLIP "
                         f"is {clip['space']!r}: re-run the decoder stage")


if __name__ == "__main__":
    main()
