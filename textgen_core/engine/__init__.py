"""Model loading and the batching generation engine (the only part of the core that needs torch)."""
