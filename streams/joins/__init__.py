"""The joins: derived events from simpul.valid.*, state in changelog topics."""
