"""Durable state under the data dir: SQLite connections and the ordered schema migrations."""
