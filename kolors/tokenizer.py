"""ChatGLM3's tokenizer as Kolors uses it (no ComfyUI, no transformers).

Equal, id for id, to diffusers' ``ChatGLMTokenizer`` called the way ``KolorsPipeline.encode_prompt``
calls it: ``tokenizer(prompt, padding="max_length", max_length=256, truncation=True)``:
- the text is encoded by the sentencepiece model alone (no special-token parsing in prompts);
- ChatGLM3's special tokens are numbered after the sentencepiece vocabulary, in the order
  [MASK], [gMASK], [sMASK], sop, eop, <|system|>, <|user|>, <|assistant|>, <|observation|>;
- every prompt starts with [gMASK] sop; truncation cuts the TEXT to ``max_length - 2`` tokens (its
  end goes) and keeps the prefix;
- padding goes on the LEFT with the sentencepiece unk id (ChatGLM's pad), attention mask 0 and
  position id 0 there; the real tokens have positions 0, 1, 2...
"""

from __future__ import annotations

import os

import torch

SPECIAL_TOKENS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop",
                  "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")


class ChatGLM3Tokenizer:
    def __init__(self, processor):
        """processor: a loaded ``sentencepiece.SentencePieceProcessor``; use :meth:`from_file` / :meth:`from_bytes`."""
        self.sp = processor
        n_words = processor.vocab_size()
        self.special_ids = {token: n_words + i for i, token in enumerate(SPECIAL_TOKENS)}
        self.vocab_size = n_words + len(SPECIAL_TOKENS)
        self.pad_id = processor.unk_id()
        self.prefix_ids = [self.special_ids["[gMASK]"], self.special_ids["sop"]]

    @classmethod
    def from_bytes(cls, data: bytes) -> ChatGLM3Tokenizer:
        import sentencepiece

        processor = sentencepiece.SentencePieceProcessor()
        try:
            processor.LoadFromSerializedProto(data)
        except (RuntimeError, OSError) as exc:
            raise ValueError(f"not a sentencepiece model ({len(data)} bytes): {exc}") from exc
        return cls(processor)

    @classmethod
    def from_file(cls, path) -> ChatGLM3Tokenizer:
        path = os.fspath(path)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no ChatGLM3 tokenizer; put the tokenizer.model of Kolors's "
                                    f"text_encoder (or tokenizer/) folder there") from None
        try:
            return cls.from_bytes(data)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}; replace it with the tokenizer.model of Kolors's text encoder") from None

    def encode(self, text: str) -> list[int]:
        """Ids of the text alone, without the [gMASK] sop prefix."""
        return list(self.sp.encode(text))

    def decode(self, ids) -> str:
        """Text of the ids, leaving out padding and special tokens."""
        ids = [int(i) for i in ids]
        n_words = self.sp.vocab_size()
        return self.sp.decode([i for i in ids if i != self.pad_id and 0 <= i < n_words])

    def text_capacity(self, max_length: int = 256) -> int:
        """How many text tokens fit in ``max_length`` beside the prefix."""
        return max(0, max_length - len(self.prefix_ids))

    def batch(self, id_lists: list[list[int]], max_length: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask, position_ids), each a long tensor [B, max_length]: prefix, text
        truncated to :meth:`text_capacity`, left padding; as the reference tokenizer makes them."""
        keep = self.text_capacity(max_length)
        rows_ids, rows_mask, rows_pos = [], [], []
        for ids in id_lists:
            ids = (self.prefix_ids + [int(i) for i in ids[:keep]])[:max_length]
            pad = max_length - len(ids)
            rows_ids.append([self.pad_id] * pad + ids)
            rows_mask.append([0] * pad + [1] * len(ids))
            rows_pos.append([0] * pad + list(range(len(ids))))
        as_tensor = lambda rows: torch.tensor(rows, dtype=torch.long).reshape(len(rows), max_length)  # noqa: E731
        return as_tensor(rows_ids), as_tensor(rows_mask), as_tensor(rows_pos)
