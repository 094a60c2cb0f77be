"""Multi-stage commands that chain the stages (corpus, tokenizer, tokens, training, report)."""
