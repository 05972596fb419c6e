"""Command line: ``memproxy serve`` and the admin subcommands (memories, users, keys, jobs)."""
