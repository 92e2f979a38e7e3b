"""Configuration: the config tree (``tree``), the pipelines file (``project``), settings from the environment, secret redaction."""
