"""PathInstruct generation through OpenAI-compatible endpoints (issue #6)."""
