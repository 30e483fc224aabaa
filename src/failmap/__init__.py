"""failmap: failure directions in CLIP space, captioned and decoded."""
