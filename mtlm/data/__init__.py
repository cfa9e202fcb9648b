"""Between raw text and batches: tokenizers (tokenization), text sources (sources), tokenizing, packing and
collation (processing), and MLM's synthetic arithmetic task (arithmetic)."""
