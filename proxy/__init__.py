"""memproxy: an OpenAI-compatible chat proxy with persistent per-user memory."""

__version__ = "0.1.0"
