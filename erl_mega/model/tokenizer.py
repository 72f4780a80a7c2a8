"""A byte-level BPE tokenizer trained locally (no hub), with a ChatML chat template."""

from __future__ import annotations

from typing import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# Grid cells stay one token each, so a cell's neighbours sit at fixed offsets: every punctuation character
# but the tags' (<, >, /) is its own piece, and so is a grid letter (x, o, Q: symbols the environments draw)
# that touches no other letter or sits inside a run of them ("xxo"). Words ("box", "down") are untouched.
GRID_PIECE = r"[^\w\s<>/]|(?<![A-Za-z])[xoQ]|[xoQ](?![A-Za-z])|(?<=[xoQ])[xoQ](?=[xoQ])"
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int, grid_cells: bool = False) -> PreTrainedTokenizerFast:
    """Train byte-level BPE on `texts`: any string stays encodable, frequent words get short codes, grid cells one each."""
    core = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.pre_tokenizer = (  # grid_cells: the embedded policy's, so a map's cells stay one token each
        pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(GRID_PIECE), behavior="isolated"), byte_level])
        if grid_cells else byte_level
    )
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer
