"""The input pipeline: datasets by name, loaders, decoding workers, augmentation, mixing."""
