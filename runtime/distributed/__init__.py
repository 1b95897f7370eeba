"""Several processes on one clip (torchrun): loaded only when a run is launched with more than one rank."""
