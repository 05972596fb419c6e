"""The memory console: static pages at ``/console`` that work through the memory API alone."""
