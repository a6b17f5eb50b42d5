"""Wire protocols behind one contract (`Provider`); the runtime picks one per engine."""

from engine.providers._base import GenerateRequest, OnDelta, Provider, ProviderResult
from engine.providers.gemini import GeminiProvider

__all__ = ["GeminiProvider", "GenerateRequest", "OnDelta", "Provider", "ProviderResult"]
