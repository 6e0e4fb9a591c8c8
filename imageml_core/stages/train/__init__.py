"""Stage 3: the gold training dataset (``training_shards``); training lands here next."""
