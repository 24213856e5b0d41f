"""The web console served by `simpul console` (see docs/console.md)."""
