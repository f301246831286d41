"""msting: an always-ready local LLM service."""

__version__ = "0.1.0"
