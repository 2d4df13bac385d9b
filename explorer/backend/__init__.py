"""The model side: towers, offline conversions, hooks, encode, answers, costs — the only code that knows transformers."""
