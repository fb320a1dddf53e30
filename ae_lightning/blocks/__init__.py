"""Building blocks of the variants: networks, losses, RBMs (and quantizers, discriminators, perceptual features)."""
