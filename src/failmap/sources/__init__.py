"""Real data sources: each returns a `failmap.data.Prepared` for the prepare
stage to write with `failmap.data.write_prepared`."""
from failmap.sources.cifar import prepare_cifar10, prepare_cifar100_superclass
from failmap.sources.imagefolder import prepare_imagefolder
from failmap.sources.vocab import DEFAULT_ADJECTIVES, DEFAULT_CONTEXTS, default_vocab

__all__ = ["prepare_cifar10", "prepare_cifar100_superclass", "prepare_imagefolder",
           "DEFAULT_ADJECTIVES", "DEFAULT_CONTEXTS", "default_vocab"]
