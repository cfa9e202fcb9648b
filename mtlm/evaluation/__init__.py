"""How good a model is: exact match on prompt/target data (exact_match); lm-eval and perplexity come later."""
