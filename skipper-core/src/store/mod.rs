//! `Store` implementations: in memory (tests, embedders' experiments) and SQLite (the default).
