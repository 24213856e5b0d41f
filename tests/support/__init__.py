"""What the tests share: one process launcher, the broker and PostgreSQL helpers, the stack, the
signing keys, generated traffic and topic reads. Test modules import from here, never from each
other; tests/conftest.py turns these into fixtures."""
