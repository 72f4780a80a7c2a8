"""ChatML turns as token segments, tokenised once each, so multi-turn episodes stay token-in/token-out.

Qwen2/Qwen3, SmolLM2 and the embedded tiny model share ChatML (`<|im_start|>role\\n…<|im_end|>\\n`).
The sampled reply ends with `<|im_end|>` (the stop token); the newline that follows it belongs to the
next environment segment, so the concatenated ids equal the template rendering of the conversation.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

IM_START, IM_END = "<|im_start|>", "<|im_end|>"


class ChatFormat:
    """Renders messages to token ids for a ChatML tokenizer."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        vocab = tokenizer.get_vocab()
        missing = [t for t in (IM_START, IM_END) if t not in vocab]
        if missing:
            raise ValueError(f"tokenizer has no {missing} token(s): only ChatML chat formats are supported")
        self.tokenizer = tokenizer
        self.im_end_id = vocab[IM_END]
        self.stop_ids = (self.im_end_id,)

    def encode(self, text: str) -> tuple[int, ...]:
        """Token ids of raw text, special tokens recognised, nothing added."""
        return tuple(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: tuple[int, ...] | list[int]) -> str:
        """Text of sampled ids without special tokens: what the environment reads."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def system(self, content: str) -> tuple[int, ...]:
        """The system message segment."""
        return self.encode(f"{IM_START}system\n{content}{IM_END}\n")

    def user_turn(self, content: str, after_reply: bool, reply_closed: bool = True) -> tuple[int, ...]:
        """A user message plus the assistant header: the non-trained segment before each reply.

        `after_reply`: a reply precedes it, whose closing newline (and `<|im_end|>` when the reply
        was cut at the length limit, `reply_closed=False`) this segment supplies.
        """
        lead = "" if not after_reply else ("\n" if reply_closed else f"{IM_END}\n")
        return self.encode(f"{lead}{IM_START}user\n{content}{IM_END}\n{IM_START}assistant\n")

    def reply(self, content: str) -> tuple[int, ...]:
        """A written assistant reply as the policy would sample it (demonstrations, tests)."""
        return self.encode(f"{content}{IM_END}")
