"""Building blocks that know nothing about H-Net: norms, mixers, MLP, stacks."""
