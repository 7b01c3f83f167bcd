"""From latents to bytes and back: the frozen coding tables and latent codecs, validity masks and escapes, the .sarz container and its header schema."""
