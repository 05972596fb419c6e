"""After the response: durable jobs, workers, and an exchange turned into checked changes."""
