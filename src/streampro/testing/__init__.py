"""Test support shared by the test suite and the benchmark scripts (not used by the library)."""

from streampro.testing.fake_openai import FakeOpenAI, chat_reply

__all__ = ["FakeOpenAI", "chat_reply"]
