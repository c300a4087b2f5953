"""Replies rendered as Markdown keep the model's special tokens visible instead of losing them as tags."""

from __future__ import annotations

from components.chat import markdown_safe


def test_special_tokens_survive_markdown() -> None:
    text = "Hi<|im_end|>\n<|im_start|>assistant</s> and <s>"
    safe = markdown_safe(text)
    assert "&lt;|im_end|&gt;" in safe and "&lt;|im_start|&gt;" in safe
    assert "&lt;/s&gt;" in safe and "&lt;s&gt;" in safe


def test_ordinary_markup_is_left_to_markdown() -> None:
    text = "**bold** <b>tag</b> a < b > c `x<y>`"
    assert markdown_safe(text) == text
