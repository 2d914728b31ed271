"""Small helpers shared by every stage: atomic writes, JSON, logging, parallel maps."""
