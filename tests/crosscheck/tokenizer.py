"""Writes a tiny word-level Hugging Face tokenizer into DIR, so the external load generator
needs no download from a model hub (it only counts and generates tokens with it)."""
import json
import os
import sys

from tokenizers import Tokenizer, models, pre_tokenizers

WORDS = """the model serves tokens quickly under load while we measure latency and throughput across
many streams simulated arrive on schedule for benchmark a an of to in is it that this with as be by
at or from are was were""".split()

out = sys.argv[1]
vocab = {w: i for i, w in enumerate(["[UNK]"] + sorted(set(WORDS)))}
tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
os.makedirs(out, exist_ok=True)
tok.save(os.path.join(out, "tokenizer.json"))
with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
    json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]", "model_max_length": 1000000}, f)
