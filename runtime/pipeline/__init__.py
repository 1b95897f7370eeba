"""The per-window pipeline: preprocess, encode, denoise (samplers over stages), decode, composite."""
