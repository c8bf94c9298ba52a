"""The OpenAI-compatible endpoints: protocol models, chat and text completions, models."""
