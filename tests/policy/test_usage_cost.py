"""Usage and cost as real responses report them: IMAGE-only output details, thoughts, cached
and tool-use prompt tokens (shapes from recorded 3 Pro Image and 3.1 Flash Image answers)."""

from __future__ import annotations

import pytest

from engine.policy import settle_cost
from engine.providers._gemini import usage_from
from sessions import Usage, decode_response, resolve_model

# usageMetadata of a recorded 3.1 Flash Image answer: a 1K image and a sentence of text, the
# details listing IMAGE only.
REAL = b"""{"candidates": [{"content": {"role": "model", "parts": [{"text": "ok"}]},
  "finishReason": "STOP"}],
 "usageMetadata": {"promptTokenCount": 1370, "candidatesTokenCount": 1150,
   "thoughtsTokenCount": 212, "totalTokenCount": 2762, "cachedContentTokenCount": 1024,
   "toolUsePromptTokenCount": 30,
   "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 250},
                           {"modality": "IMAGE", "tokenCount": 1120}],
   "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1120}]}}"""


def test_image_only_details_leave_the_rest_as_text() -> None:
    """candidatesTokenCount minus the listed IMAGE tokens is the visible text."""
    usage = usage_from(decode_response(REAL).usage_metadata)
    assert usage.output_image_tokens == 1120
    assert usage.output_text_tokens == 30
    assert usage.thoughts_tokens == 212
    assert usage.cached_tokens == 1024
    assert usage.tool_use_tokens == 30
    assert usage.total_tokens == 2762


def test_every_billed_count_is_priced() -> None:
    """Text output, thoughts (output rate), cached input (cached rate) and tool use (input
    rate) all cost; nothing is priced at zero."""
    spec = resolve_model("gemini-3.1-flash-image")
    usage = usage_from(decode_response(REAL).usage_metadata)
    cost = settle_cost(spec, "google", usage, "1K", 1)
    p = spec.prices
    rate_in, rate_out = p.input_per_million / 1e6, p.text_output_per_million / 1e6
    rate_cached = p.cached_rate() / 1e6
    # 250 text + 1120 image prompt tokens; 1024 of them cached (250 text, then 774 image).
    expected_text = 250 * rate_cached + 30 * rate_in + 30 * rate_out
    expected_image = (1120 - 774) * rate_in + 774 * rate_cached + p.image_by_size["1K"]
    assert cost.text_usd == pytest.approx(expected_text)
    assert cost.image_usd == pytest.approx(expected_image)
    assert cost.thinking_usd == pytest.approx(212 * rate_out)
    assert cost.total_usd == pytest.approx(expected_text + expected_image + 212 * rate_out)


def test_text_of_an_image_answer_was_priced_at_zero_before() -> None:
    """The regression: with IMAGE-only details the text output used to count 0 tokens."""
    spec = resolve_model("gemini-3-pro-image")
    with_text = Usage(prompt_tokens=100, output_tokens=1120 + 500, output_image_tokens=1120)
    usage = usage_from(decode_response(REAL.replace(b"1150", b"1620")).usage_metadata)
    assert usage.output_text_tokens == 500
    priced = settle_cost(spec, "google", usage, "1K", 1)
    unpriced = settle_cost(spec, "google", with_text, "1K", 1)
    assert priced.text_usd > unpriced.text_usd


def test_cached_tokens_cost_a_tenth_unless_the_catalog_says() -> None:
    """The cached rate defaults to a tenth of the input rate."""
    spec = resolve_model("gemini-3-pro-image")
    assert spec.prices.cached_rate() == pytest.approx(spec.prices.input_per_million / 10)
