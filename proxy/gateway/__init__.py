"""The chat side: who is calling, forwarding to the provider, relaying the reply as it arrives."""
