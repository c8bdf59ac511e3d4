"""The pieces every pipeline shares, one of each: the training loop, evaluation, the append-only JSONL archive,
the timer, the architecture identity, and the command-line builder."""
